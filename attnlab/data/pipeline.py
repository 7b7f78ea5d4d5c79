"""The data entry point of the trainer: config -> batched, sharded grain dataset.

``make_dataset(cfg, split, ...)`` takes ``config.data`` (a ``ConfigDict`` or a
plain mapping). Start a config from ``default_data_config(name)``; keys left
out of ``cfg`` take those defaults, and keys that the task does not know
raise a ValueError (typos are not silently ignored).

Keys (every task):
  name                       "mqar" | "copying" | "selective_copying" | "bytes" | "tfds"
                             | "mqar_classification" | "grid_quadrant"
  seq_len                    int, length of inputs/targets/weights
  read_num_threads           int, grain reader threads (0 = read in the caller's thread)
  read_prefetch_buffer_size  int, batches prefetched by those threads

Synthetic tasks ("mqar", "copying", "selective_copying", "mqar_classification"; see
synthetic.py):
  vocab_size                 int, token vocabulary (ids 0 and 1 are PAD/blank and SEP)
  num_train_examples         int, size of the (fixed) training set
  num_validation_examples    int, size of the validation set
  data_seed                  int, content seed; example i of a split is a pure
                             function of (data_seed, split, i). `seed` of
                             make_dataset only changes the shuffle order.
"mqar" also:
  num_kv_pairs               int, key-value pairs per sequence
  num_queries                int, keys queried per sequence; 0 = all (Zoology)
  query_distribution         "power_law" (Zoology) | "uniform" query placement
  power_a                    float, power-law parameter a (Zoology: 0.01)
  random_non_queries         bool, random filler tokens in the query region (Zoology)
"mqar_classification" (same keys as "mqar"; examples are {"inputs", "weights",
"label"}: the label is the value of the key at the final position, minus vocab_size // 2;
``num_classes(cfg) = vocab_size - vocab_size // 2``; num_queries counts that final query)
"copying" also:
  copy_len                   int, tokens to copy; 0 = seq_len // 2
"selective_copying" also:
  num_tokens_to_copy         int, content tokens scattered in the context

"grid_quadrant" (2D classification for the grid mechanisms, see grid_tasks.py; examples are
{"inputs", "weights", "label"}, 4 classes, vocab_size = 2 + num_levels + num_colors; also
num_train_examples, num_validation_examples, data_seed as above):
  seq_len                    int, must equal grid_height * grid_width
  grid_height, grid_width    int, even grid sides (model grid_shape = (grid_height, grid_width))
  num_levels                 int, background intensity levels
  num_colors                 int, mark colours (>= 2)
  num_distractors            int, marks whose colour differs from the corner cue's

"bytes" (byte-level LM on local text, vocab 256; see text.py):
  files                      tuple of file paths; () = use `dir`
  dir                        folder read recursively; "" (and no files) = stdlib .py files
  file_pattern               fnmatch pattern on file names; "" = "*.py" (stdlib) or "*"
  max_mb                     float, cap on the corpus size in MiB (both splits together)
  validation_fraction        float, fraction of files (by path hash) in "validation"
  separator                  int, byte written after each file
  bos                        int, byte at position 0 of every window; -1 = none
  repeat_prob                float, probability that a window holds a random printable
                             string written twice (in-context copying; see text.py)
  repeat_len                 (lo, hi), length range of that string
  repeat_seed                int, seed of those edits

"tfds" (TFDS via tfds.data_source / ArrayRecord, bytes, vocab 256; see tfds_source.py):
  tfds_name                  TFDS name, e.g. "imdb_reviews"
  tfds_train_split           TFDS split string used for split="train"
  tfds_validation_split      TFDS split string used for split="validation"
  data_dir                   TFDS data dir; "" = TFDS default
  tfds_format                "lm" | "classification"
  text_key                   text feature name
  label_key                  label feature name ("classification")
  num_classes                int, classes for "classification"; 0 = read from TFDS info

Pipeline, for ``split="train"``: the source is cut to a multiple of
``shard_count``, shuffled globally by ``seed`` (grain ``MapDataset.shuffle``,
reshuffled each epoch), host ``shard_index`` takes ``[shard_index::shard_count]``
(equal-size, disjoint shards within every epoch), repeated ``num_epochs`` times
(None = forever), batched to ``global_batch_size // shard_count`` with
``drop_remainder=True``. For ``split="validation"``: no shuffle, the host's
shard ``[shard_index::shard_count]``, padded with all-zero examples (weights 0,
and label 0 for classification) so that every host gets the same number of
full batches; ``num_epochs`` (None = 1) epochs.

Batches are dicts of numpy arrays with a leading batch dim, e.g. ``inputs``
int32 [B, seq_len]. ``iter(dataset)`` is a checkpointable grain
``DatasetIterator`` (``get_state`` / ``set_state``); to save it with orbax use
``iterator_checkpoint_args``::

  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data_iter=iterator_checkpoint_args(it)))
  mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data_iter=iterator_checkpoint_args(it, restore=True)))  # restores `it` in place
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import grain
import ml_collections
import numpy as np

from attnlab.data import grid_tasks
from attnlab.data import synthetic
from attnlab.data import text
from attnlab.data import tfds_source
from attnlab.data._checks import check_int

DATASET_NAMES = ("mqar", "copying", "selective_copying", "bytes", "tfds",
                 "mqar_classification", "grid_quadrant")
SYNTHETIC_NAMES = ("mqar", "copying", "selective_copying", "mqar_classification")
SPLITS = ("train", "validation")

_COMMON = dict(read_num_threads=2, read_prefetch_buffer_size=16)
_SYNTHETIC = dict(num_train_examples=100_000, num_validation_examples=3_000,
                  data_seed=0)
_DEFAULTS: dict[str, dict[str, Any]] = {
    "mqar": dict(seq_len=256, vocab_size=8192, **_SYNTHETIC, num_kv_pairs=16,
                 num_queries=0, query_distribution="power_law", power_a=0.01,
                 random_non_queries=True),
    "mqar_classification": dict(seq_len=256, vocab_size=8192, **_SYNTHETIC, num_kv_pairs=16,
                                num_queries=0, query_distribution="power_law", power_a=0.01,
                                random_non_queries=True),
    "grid_quadrant": dict(seq_len=256, grid_height=16, grid_width=16, num_levels=4,
                          num_colors=8, num_distractors=8, **_SYNTHETIC),
    "copying": dict(seq_len=128, vocab_size=32, **_SYNTHETIC, copy_len=0),
    "selective_copying": dict(seq_len=256, vocab_size=16, **_SYNTHETIC,
                              num_tokens_to_copy=16),
    "bytes": dict(seq_len=512, files=(), dir="", file_pattern="", max_mb=32.0,
                  validation_fraction=0.05, separator=0, bos=-1, repeat_prob=0.0,
                  repeat_len=(16, 64), repeat_seed=0),
    "tfds": dict(seq_len=512, tfds_name="imdb_reviews", tfds_train_split="train",
                 tfds_validation_split="test", data_dir="",
                 tfds_format="classification", text_key="text",
                 label_key="label", num_classes=0),
}


def _check_name(name: Any) -> str:
  if name not in DATASET_NAMES:
    raise ValueError(
        f"data name must be one of {list(DATASET_NAMES)}, got {name!r}.")
  return name


def default_data_config(name: str) -> ml_collections.ConfigDict:
  """A fresh ConfigDict with every key of task `name` at its default value."""
  _check_name(name)
  return ml_collections.ConfigDict(dict(name=name, **_DEFAULTS[name], **_COMMON))


def resolve_config(cfg: ml_collections.ConfigDict | Mapping[str, Any],
                   ) -> ml_collections.ConfigDict:
  """`cfg` merged over ``default_data_config(cfg.name)``; checks unknown keys/types."""
  if isinstance(cfg, ml_collections.ConfigDict):
    values = cfg.to_dict()
  elif isinstance(cfg, Mapping):
    values = dict(cfg)
  else:
    raise TypeError(
        f"cfg must be a ConfigDict or a mapping, got {type(cfg).__name__}.")
  if "name" not in values:
    raise ValueError(f"cfg must have a 'name' key, one of {list(DATASET_NAMES)}.")
  merged = default_data_config(_check_name(values["name"]))
  unknown = sorted(set(values) - set(merged))
  if unknown:
    raise ValueError(
        f"unknown data config key(s) {unknown} for name={values['name']!r}; "
        f"valid keys: {sorted(merged)}.")
  merged.update(values)
  return merged


def vocab_size(cfg: ml_collections.ConfigDict | Mapping[str, Any]) -> int:
  """Token vocabulary size of the task: ``cfg.vocab_size`` or 256 for bytes/tfds."""
  cfg = resolve_config(cfg)
  if cfg.name in SYNTHETIC_NAMES:
    return int(cfg.vocab_size)
  if cfg.name == "grid_quadrant":
    return grid_tasks.FIRST_LEVEL + int(cfg.num_levels) + int(cfg.num_colors)
  return text.BYTE_VOCAB_SIZE


def num_classes(cfg: ml_collections.ConfigDict | Mapping[str, Any]) -> int:
  """Number of classes of a classification task: "mqar_classification" (``vocab_size -
  vocab_size // 2``), "grid_quadrant" (4) or "tfds" classification (cfg or TFDS info)."""
  cfg = resolve_config(cfg)
  if cfg.name == "mqar_classification":
    return int(cfg.vocab_size) - int(cfg.vocab_size) // 2
  if cfg.name == "grid_quadrant":
    return grid_tasks.NUM_QUADRANTS
  if cfg.name != "tfds" or cfg.tfds_format != "classification":
    raise ValueError(
        "num_classes needs name='mqar_classification' or 'grid_quadrant', or name='tfds' and "
        "tfds_format='classification', got "
        f"name={cfg.name!r}" + (f", tfds_format={cfg.tfds_format!r}."
                                if cfg.name == "tfds" else "."))
  if cfg.num_classes > 0:
    return int(cfg.num_classes)
  return tfds_source.tfds_num_classes(cfg.tfds_name, label_key=cfg.label_key,
                                      data_dir=cfg.data_dir or None)


def _check_split(split: Any) -> str:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}.")
  return split


def source_dataset(cfg: ml_collections.ConfigDict | Mapping[str, Any],
                   split: str) -> grain.MapDataset:
  """Unbatched, unshuffled, unsharded examples of `split` as a MapDataset."""
  cfg = resolve_config(cfg)
  _check_split(split)
  if cfg.name in SYNTHETIC_NAMES:
    common = dict(seq_len=cfg.seq_len, vocab_size=cfg.vocab_size,
                  seed=cfg.data_seed, split=split,
                  num_examples=(cfg.num_train_examples if split == "train"
                                else cfg.num_validation_examples))
    if cfg.name in ("mqar", "mqar_classification"):
      make = (synthetic.mqar_dataset if cfg.name == "mqar"
              else synthetic.mqar_classification_dataset)
      return make(
          **common, num_kv_pairs=cfg.num_kv_pairs, num_queries=cfg.num_queries,
          query_distribution=cfg.query_distribution, power_a=cfg.power_a,
          random_non_queries=cfg.random_non_queries)
    if cfg.name == "copying":
      return synthetic.copying_dataset(**common, copy_len=cfg.copy_len)
    return synthetic.selective_copying_dataset(
        **common, num_tokens_to_copy=cfg.num_tokens_to_copy)
  if cfg.name == "grid_quadrant":
    source = grid_tasks.GridQuadrantSource(
        grid_height=cfg.grid_height, grid_width=cfg.grid_width, num_levels=cfg.num_levels,
        num_colors=cfg.num_colors, num_distractors=cfg.num_distractors,
        num_examples=(cfg.num_train_examples if split == "train"
                      else cfg.num_validation_examples),
        seed=cfg.data_seed, split=split)
    if cfg.seq_len != source.seq_len:
      raise ValueError(
          f"seq_len must equal grid_height * grid_width = {cfg.grid_height} * "
          f"{cfg.grid_width} = {source.seq_len} for name='grid_quadrant', got "
          f"seq_len={cfg.seq_len}.")
    return grain.MapDataset.source(source)
  if cfg.name == "bytes":
    return text.byte_lm_dataset(
        split, seq_len=cfg.seq_len, files=tuple(cfg.files) or None,
        directory=cfg.dir or None, file_pattern=cfg.file_pattern or None,
        max_mb=cfg.max_mb, validation_fraction=cfg.validation_fraction,
        separator=cfg.separator, bos=cfg.bos, repeat_prob=cfg.repeat_prob,
        repeat_len=tuple(cfg.repeat_len), repeat_seed=cfg.repeat_seed)
  tfds_split = cfg.tfds_train_split if split == "train" else cfg.tfds_validation_split
  return tfds_source.tfds_dataset(
      cfg.tfds_name, tfds_split, seq_len=cfg.seq_len,
      data_dir=cfg.data_dir or None, fmt=cfg.tfds_format,
      text_key=cfg.text_key, label_key=cfg.label_key)


class _ZerosSource:
  """`length` copies of an all-zero example shaped like `template` (eval padding)."""

  def __init__(self, template: Mapping[str, np.ndarray], length: int):
    self._zeros = {k: np.zeros_like(v) for k, v in template.items()}
    self._length = length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self._length:
      raise IndexError(f"index must be in [0, {self._length}), got {index}.")
    return {k: v.copy() for k, v in self._zeros.items()}


def make_dataset(cfg: ml_collections.ConfigDict | Mapping[str, Any], split: str, *,
                 global_batch_size: int, seed: int, shard_index: int = 0,
                 shard_count: int = 1, num_epochs: int | None = None,
                 ) -> grain.IterDataset:
  """Batched dataset of this host's shard of `split` (see the module docstring).

  Args:
    cfg: ``config.data``; see the module docstring for the keys.
    split: "train" (shuffled, repeated, drop_remainder) or "validation"
      (ordered, finite, zero-padded to full batches).
    global_batch_size: batch size over all hosts; must be divisible by
      `shard_count`. Each host gets batches of ``global_batch_size //
      shard_count`` examples.
    seed: shuffle seed in [0, 2**32) (train only).
    shard_index: this host's index in [0, shard_count), e.g. ``jax.process_index()``.
    shard_count: number of hosts, e.g. ``jax.process_count()``.
    num_epochs: passes over the data; None = forever (train) or 1 (validation).

  Returns:
    A ``grain.IterDataset`` of dicts of numpy arrays with leading dim
    ``global_batch_size // shard_count``.
  """
  cfg = resolve_config(cfg)
  _check_split(split)
  global_batch_size = check_int("global_batch_size", global_batch_size, minimum=1)
  seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
  shard_count = check_int("shard_count", shard_count, minimum=1)
  shard_index = check_int("shard_index", shard_index, minimum=0,
                          maximum=shard_count - 1)
  if num_epochs is not None:
    num_epochs = check_int("num_epochs", num_epochs, minimum=1)
  if global_batch_size % shard_count:
    raise ValueError(
        f"global_batch_size must be divisible by shard_count={shard_count}, got "
        f"global_batch_size={global_batch_size}.")
  batch_size = global_batch_size // shard_count

  ds = source_dataset(cfg, split)
  num_examples = len(ds)
  if split == "train":
    usable = num_examples - num_examples % shard_count
    if usable == 0:
      raise ValueError(
          f"the train split has {num_examples} example(s), fewer than "
          f"shard_count={shard_count}.")
    if usable < num_examples:
      ds = ds[:usable]
    ds = ds.shuffle(seed=seed)
    ds = ds[shard_index::shard_count]
    if num_epochs is not None and len(ds) * num_epochs < batch_size:
      raise ValueError(
          f"per-host batch size {batch_size} (global_batch_size="
          f"{global_batch_size}, shard_count={shard_count}) exceeds the "
          f"{len(ds) * num_epochs} train examples per host in num_epochs={num_epochs}.")
    ds = ds.repeat(num_epochs)
    ds = ds.batch(batch_size, drop_remainder=True)
  else:
    num_batches = math.ceil(math.ceil(num_examples / shard_count) / batch_size)
    shard = ds[shard_index::shard_count]
    pad = num_batches * batch_size - len(shard)
    if pad:
      shard = grain.MapDataset.concatenate(
          [shard, grain.MapDataset.source(_ZerosSource(ds[0], pad))])
    if num_epochs is not None and num_epochs > 1:
      shard = shard.repeat(num_epochs)
    ds = shard.batch(batch_size, drop_remainder=True)
  return ds.to_iter_dataset(grain.ReadOptions(
      num_threads=check_int("read_num_threads", cfg.read_num_threads, minimum=0),
      prefetch_buffer_size=check_int("read_prefetch_buffer_size",
                                     cfg.read_prefetch_buffer_size, minimum=0)))


def data_iterator(cfg: ml_collections.ConfigDict | Mapping[str, Any], split: str, *,
                  global_batch_size: int, seed: int, shard_index: int = 0,
                  shard_count: int = 1, num_epochs: int | None = None,
                  ) -> grain.DatasetIterator:
  """``iter(make_dataset(...))``: a checkpointable grain DatasetIterator."""
  return iter(make_dataset(cfg, split, global_batch_size=global_batch_size,
                           seed=seed, shard_index=shard_index,
                           shard_count=shard_count, num_epochs=num_epochs))


def iterator_checkpoint_args(iterator: grain.DatasetIterator, *,
                             restore: bool = False) -> Any:
  """Orbax args saving (or, with ``restore=True``, restoring in place) `iterator`.

  Returns ``grain.checkpoint.CheckpointSave(iterator)`` or
  ``grain.checkpoint.CheckpointRestore(iterator)``, registered with grain's
  orbax ``CheckpointHandler``; use it as one item of ``ocp.args.Composite``.
  Each process writes its own ``process_<i>-of-<n>.json`` (grain uses
  ``jax.process_index()``). The state is captured synchronously in ``save``.
  """
  if not isinstance(iterator, grain.DatasetIterator):
    raise TypeError(
        f"iterator must be a grain.DatasetIterator, got {type(iterator).__name__}.")
  try:
    save_cls = grain.checkpoint.CheckpointSave
    restore_cls = grain.checkpoint.CheckpointRestore
  except AttributeError as e:  # grain only defines them when orbax is importable
    raise ImportError("iterator_checkpoint_args needs orbax-checkpoint installed.") from e
  return restore_cls(iterator) if restore else save_cls(iterator)
