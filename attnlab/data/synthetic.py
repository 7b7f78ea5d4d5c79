"""Synthetic sequence tasks generated on the fly, as random-access grain sources.

Every example is a pure function of ``(seed, split, index)``: example ``i`` is
drawn from ``np.random.default_rng([seed, crc32(split), i])``, so a dataset
can be shuffled, sharded and checkpointed by grain without storing anything,
and the "train" and "validation" splits of the same seed are independent.

Examples are dicts of numpy arrays in next-token LM format::

  inputs  int32   [seq_len]  tokens fed to the model
  targets int32   [seq_len]  targets[t] = token the model should predict at t
  weights float32 [seq_len]  1.0 only at answer positions (loss / accuracy)

Away from the answer positions ``targets[t] == inputs[t + 1]`` (and
``targets[-1] == PAD_ID``) with weight 0, so a plain LM loss is also possible.

Tasks:

* MQAR (multi-query associative recall, Zoology, arXiv 2312.04927):
  ``k1 v1 k2 v2 ... kN vN`` followed by a query region in which some keys
  re-appear; at each query position the target is the value paired with that
  key. Keys are drawn without replacement from ``[1, vocab_size // 2)`` and
  values without replacement from ``[vocab_size // 2, vocab_size)``. Query
  ``j`` is placed at position ``2 * num_kv_pairs + 2 * gap_j``; the gaps are
  distinct and, as in Zoology, drawn with probability ``p(gap = g) ∝ a *
  (g + 1) ** (a - 1)`` (``query_distribution="power_law"``, ``a = power_a``,
  default 0.01, which favours queries close to the key-value context) or
  uniformly (``query_distribution="uniform"``). As in Zoology, the other
  positions of the query region are uniform random tokens from the whole
  vocab (``random_non_queries=True``) or ``PAD_ID`` (False), and the token
  after a query key is such a filler token, not the value.
* copying: ``c_1 .. c_L SEP c_1 .. c_L`` then ``PAD_ID`` padding; the answer
  positions are the ``L`` positions from ``SEP`` on. Content tokens are uniform
  in ``[2, vocab_size)``.
* MQAR classification (``MQARClassificationSource``): an MQAR sequence whose last
  query key is moved to the final position; the example is classified by that key's value
  (``label = value - vocab_size // 2``, ``num_classes = vocab_size - vocab_size // 2``).
  Format ``{"inputs" int32 [seq_len], "weights" float32 [seq_len] (all 1), "label" int32 []}``
  (as "tfds" classification). For encoder classifiers and pooling heads.
* selective copying (Mamba, arXiv 2312.00752): ``num_tokens_to_copy`` content
  tokens (uniform in ``[2, vocab_size)``) at random increasing positions of a
  ``seq_len - num_tokens_to_copy`` long context filled with the blank token
  ``PAD_ID``, then ``SEP`` and the content tokens in order; the answer
  positions are the ``num_tokens_to_copy`` positions from ``SEP`` on.
"""

from __future__ import annotations

import abc
import operator
import zlib
from typing import Any

import grain
import numpy as np

from attnlab.data._checks import check_choice, check_float, check_int

Example = dict[str, np.ndarray]

PAD_ID = 0  # padding / blank / filler token
SEP_ID = 1  # separator before the answer of (selective) copying
QUERY_DISTRIBUTIONS = ("power_law", "uniform")


def split_key(split: str) -> int:
  """Stable 32-bit integer for a split name, used in the per-example seed."""
  if not isinstance(split, str):
    raise TypeError(f"split must be a str, got {split!r} of type {type(split).__name__}.")
  return zlib.crc32(split.encode("utf-8"))


def lm_example(stream: np.ndarray, answer_mask: np.ndarray) -> Example:
  """Builds an LM example from a token stream of length ``seq_len + 1``.

  Args:
    stream: int [seq_len + 1] tokens; ``inputs = stream[:-1]``, ``targets =
      stream[1:]``.
    answer_mask: bool [seq_len], True where the loss counts.

  Returns:
    ``{"inputs": int32 [seq_len], "targets": int32 [seq_len], "weights": float32
    [seq_len]}``.
  """
  stream = np.asarray(stream, dtype=np.int32)
  return {
      "inputs": stream[:-1].copy(),
      "targets": stream[1:].copy(),
      "weights": np.asarray(answer_mask, dtype=np.float32),
  }


class SyntheticSource(abc.ABC):
  """Random-access source of ``num_examples`` synthetic examples.

  ``source[i]`` is generated from ``np.random.default_rng([seed,
  split_key(split), i])``; nothing is stored. Implements ``__len__`` and
  ``__getitem__`` so ``grain.MapDataset.source(source)`` works.
  """

  def __init__(self, *, seq_len: int, vocab_size: int, num_examples: int,
               seed: int = 0, split: str = "train"):
    self.seq_len = check_int("seq_len", seq_len, minimum=2)
    self.vocab_size = check_int("vocab_size", vocab_size, minimum=3)
    self.num_examples = check_int("num_examples", num_examples, minimum=1)
    self.seed = check_int("seed", seed, minimum=0)
    self.split = split
    self._split_key = split_key(split)

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> Example:
    index = operator.index(index)
    if index < 0:
      index += self.num_examples
    if not 0 <= index < self.num_examples:
      raise IndexError(
          f"index must be in [0, {self.num_examples}), got {index}.")
    rng = np.random.default_rng([self.seed, self._split_key, index])
    return self.generate(rng)

  @abc.abstractmethod
  def generate(self, rng: np.random.Generator) -> Example:
    """Draws one example with `rng`."""

  def _params(self) -> dict[str, Any]:
    return dict(seq_len=self.seq_len, vocab_size=self.vocab_size,
                num_examples=self.num_examples, seed=self.seed, split=self.split)

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
    return f"{type(self).__name__}({args})"


class MQARSource(SyntheticSource):
  """Multi-query associative recall (Zoology). See the module docstring.

  Args:
    seq_len: length of ``inputs``; needs ``2 * num_kv_pairs + 2 * num_queries
      <= seq_len`` (Zoology uses ``4 * num_kv_pairs <= seq_len``).
    vocab_size: keys in ``[1, vocab_size // 2)``, values in ``[vocab_size // 2,
      vocab_size)``; needs ``vocab_size // 2 - 1 >= num_kv_pairs``.
    num_kv_pairs: number of distinct key-value pairs in the context.
    num_queries: how many of the keys are queried (each at most once); ``None`` or 0
      means all of them, as in Zoology.
    query_distribution: "power_law" (Zoology) or "uniform" placement of queries.
    power_a: exponent parameter ``a`` of the power law.
    random_non_queries: fill non-query positions of the query region with
      uniform random tokens (Zoology) instead of ``PAD_ID``.
  """

  def __init__(self, *, seq_len: int, vocab_size: int, num_kv_pairs: int,
               num_examples: int, seed: int = 0, split: str = "train",
               num_queries: int | None = None,
               query_distribution: str = "power_law", power_a: float = 0.01,
               random_non_queries: bool = True):
    super().__init__(seq_len=seq_len, vocab_size=vocab_size,
                     num_examples=num_examples, seed=seed, split=split)
    self.num_kv_pairs = check_int("num_kv_pairs", num_kv_pairs, minimum=1)
    if num_queries is None or num_queries == 0:
      num_queries = self.num_kv_pairs
    self.num_queries = check_int("num_queries", num_queries, minimum=1,
                                 maximum=self.num_kv_pairs)
    self.query_distribution = check_choice(
        "query_distribution", query_distribution, QUERY_DISTRIBUTIONS)
    self.power_a = check_float("power_a", power_a, minimum=1e-6)
    self.random_non_queries = bool(random_non_queries)
    half = self.vocab_size // 2
    if half - 1 < self.num_kv_pairs:
      raise ValueError(
          f"vocab_size must be >= {2 * (self.num_kv_pairs + 1)} so that the "
          f"{self.num_kv_pairs} keys fit in [1, vocab_size // 2), got "
          f"vocab_size={self.vocab_size}.")
    self.context_len = 2 * self.num_kv_pairs
    self.num_query_slots = (self.seq_len - self.context_len) // 2
    if self.num_query_slots < self.num_queries:
      raise ValueError(
          f"seq_len must be >= 2 * num_kv_pairs + 2 * num_queries = "
          f"{self.context_len + 2 * self.num_queries}, got seq_len={self.seq_len} "
          f"(num_kv_pairs={self.num_kv_pairs}, num_queries={self.num_queries}).")
    if self.query_distribution == "power_law":
      a = self.power_a
      p = a * np.arange(1, self.num_query_slots + 1, dtype=np.float64) ** (a - 1)
      self._gap_probs: np.ndarray | None = p / p.sum()
    else:
      self._gap_probs = None

  def generate(self, rng: np.random.Generator) -> Example:
    half = self.vocab_size // 2
    kv, q, ctx = self.num_kv_pairs, self.num_queries, self.context_len
    keys = rng.choice(half - 1, size=kv, replace=False) + 1
    values = rng.choice(self.vocab_size - half, size=kv, replace=False) + half
    gaps = rng.choice(self.num_query_slots, size=q, replace=False,
                      p=self._gap_probs)
    queried = rng.permutation(kv)[:q] if q < kv else np.arange(kv)

    stream = np.full(self.seq_len + 1, PAD_ID, dtype=np.int64)
    stream[0:ctx:2] = keys
    stream[1:ctx:2] = values
    if self.random_non_queries:
      stream[ctx:] = rng.integers(0, self.vocab_size, size=self.seq_len + 1 - ctx)
    stream[-1] = PAD_ID
    query_pos = ctx + 2 * gaps
    stream[query_pos] = keys[queried]
    example = lm_example(stream, np.zeros(self.seq_len, dtype=bool))
    example["targets"][query_pos] = values[queried]
    example["weights"][query_pos] = 1.0
    return example

  def _params(self) -> dict[str, Any]:
    return dict(super()._params(), num_kv_pairs=self.num_kv_pairs,
                num_queries=self.num_queries,
                query_distribution=self.query_distribution, power_a=self.power_a,
                random_non_queries=self.random_non_queries)


class MQARClassificationSource(MQARSource):
  """MQAR as sequence classification: the label is the value of the final queried key.

  The sequence is an MQAR input (``k1 v1 ... kN vN``, then a query region with
  ``num_queries - 1`` earlier queries placed as in ``MQARSource``, each followed by filler
  tokens, never by their values), and its last token ``inputs[-1]`` is one more queried key
  (distinct from the earlier queries). ``label = value(inputs[-1]) - vocab_size // 2``.
  ``num_queries`` (0/None = all keys, as MQAR) counts the final query; needs
  ``2 * num_kv_pairs + 2 * max(num_queries - 1, 1) + 1 <= seq_len``.
  """

  def __init__(self, *, seq_len: int, vocab_size: int, num_kv_pairs: int,
               num_examples: int, seed: int = 0, split: str = "train",
               num_queries: int | None = None,
               query_distribution: str = "power_law", power_a: float = 0.01,
               random_non_queries: bool = True):
    kv = check_int("num_kv_pairs", num_kv_pairs, minimum=1)
    nq = kv if num_queries is None or num_queries == 0 else check_int(
        "num_queries", num_queries, minimum=1, maximum=kv)
    seq_len = check_int("seq_len", seq_len, minimum=2)
    need = 2 * kv + 2 * max(nq - 1, 1) + 1
    if need > seq_len:
      raise ValueError(
          f"seq_len must be >= 2 * num_kv_pairs + 2 * max(num_queries - 1, 1) + 1 = {need}, "
          f"got seq_len={seq_len} (num_kv_pairs={kv}, num_queries={nq}).")
    # The earlier queries use MQAR's placement over the region before the final token.
    super().__init__(seq_len=seq_len - 1, vocab_size=vocab_size, num_kv_pairs=kv,
                     num_examples=num_examples, seed=seed, split=split,
                     num_queries=max(nq - 1, 1), query_distribution=query_distribution,
                     power_a=power_a, random_non_queries=random_non_queries)
    self.seq_len = seq_len
    self.num_queries = nq
    self.num_classes = self.vocab_size - self.vocab_size // 2

  def generate(self, rng: np.random.Generator) -> Example:
    half = self.vocab_size // 2
    kv, ctx = self.num_kv_pairs, self.context_len
    keys = rng.choice(half - 1, size=kv, replace=False) + 1
    values = rng.choice(self.vocab_size - half, size=kv, replace=False) + half
    order = rng.permutation(kv)
    final, earlier = order[0], order[1:self.num_queries]
    inputs = np.full(self.seq_len, PAD_ID, dtype=np.int64)
    inputs[0:ctx:2] = keys
    inputs[1:ctx:2] = values
    if self.random_non_queries:
      inputs[ctx:] = rng.integers(0, self.vocab_size, size=self.seq_len - ctx)
    if len(earlier):
      gaps = rng.choice(self.num_query_slots, size=len(earlier), replace=False,
                        p=self._gap_probs)
      inputs[ctx + 2 * gaps] = keys[earlier]
    inputs[-1] = keys[final]
    return {
        "inputs": inputs.astype(np.int32),
        "weights": np.ones(self.seq_len, dtype=np.float32),
        "label": np.asarray(values[final] - half, dtype=np.int32),
    }


class CopyingSource(SyntheticSource):
  """Copying: ``c_1..c_L SEP c_1..c_L PAD...``; answers from ``SEP`` on.

  Args:
    copy_len: ``L``, number of tokens to copy; ``None``/0 means ``seq_len // 2``.
      Needs ``2 * L <= seq_len``.
  """

  def __init__(self, *, seq_len: int, vocab_size: int, num_examples: int,
               seed: int = 0, split: str = "train", copy_len: int | None = None):
    super().__init__(seq_len=seq_len, vocab_size=vocab_size,
                     num_examples=num_examples, seed=seed, split=split)
    if copy_len is None or copy_len == 0:
      copy_len = self.seq_len // 2
    self.copy_len = check_int("copy_len", copy_len, minimum=1)
    if 2 * self.copy_len > self.seq_len:
      raise ValueError(
          f"seq_len must be >= 2 * copy_len = {2 * self.copy_len}, got "
          f"seq_len={self.seq_len} (copy_len={self.copy_len}).")

  def generate(self, rng: np.random.Generator) -> Example:
    n = self.copy_len
    content = rng.integers(2, self.vocab_size, size=n)
    stream = np.full(self.seq_len + 1, PAD_ID, dtype=np.int64)
    stream[:n] = content
    stream[n] = SEP_ID
    stream[n + 1:2 * n + 1] = content
    mask = np.zeros(self.seq_len, dtype=bool)
    mask[n:2 * n] = True
    return lm_example(stream, mask)

  def _params(self) -> dict[str, Any]:
    return dict(super()._params(), copy_len=self.copy_len)


class SelectiveCopyingSource(SyntheticSource):
  """Selective copying (Mamba): content among blanks, ``SEP``, content in order.

  Args:
    num_tokens_to_copy: number of content tokens ``n``; the context holding
      them is ``seq_len - n`` long and needs ``seq_len - n >= n``.
  """

  def __init__(self, *, seq_len: int, vocab_size: int, num_examples: int,
               seed: int = 0, split: str = "train", num_tokens_to_copy: int = 16):
    super().__init__(seq_len=seq_len, vocab_size=vocab_size,
                     num_examples=num_examples, seed=seed, split=split)
    self.num_tokens_to_copy = check_int("num_tokens_to_copy", num_tokens_to_copy,
                                        minimum=1)
    if 2 * self.num_tokens_to_copy > self.seq_len:
      raise ValueError(
          f"seq_len must be >= 2 * num_tokens_to_copy = "
          f"{2 * self.num_tokens_to_copy}, got seq_len={self.seq_len}.")
    self.context_len = self.seq_len - self.num_tokens_to_copy

  def generate(self, rng: np.random.Generator) -> Example:
    n, ctx = self.num_tokens_to_copy, self.context_len
    content = rng.integers(2, self.vocab_size, size=n)
    positions = np.sort(rng.choice(ctx, size=n, replace=False))
    stream = np.full(self.seq_len + 1, PAD_ID, dtype=np.int64)
    stream[positions] = content
    stream[ctx] = SEP_ID
    stream[ctx + 1:] = content
    mask = np.zeros(self.seq_len, dtype=bool)
    mask[ctx:] = True
    return lm_example(stream, mask)

  def _params(self) -> dict[str, Any]:
    return dict(super()._params(), num_tokens_to_copy=self.num_tokens_to_copy)


def mqar_dataset(**kwargs: Any) -> grain.MapDataset:
  """``grain.MapDataset`` over ``MQARSource(**kwargs)``."""
  return grain.MapDataset.source(MQARSource(**kwargs))


def mqar_classification_dataset(**kwargs: Any) -> grain.MapDataset:
  """``grain.MapDataset`` over ``MQARClassificationSource(**kwargs)``."""
  return grain.MapDataset.source(MQARClassificationSource(**kwargs))


def copying_dataset(**kwargs: Any) -> grain.MapDataset:
  """``grain.MapDataset`` over ``CopyingSource(**kwargs)``."""
  return grain.MapDataset.source(CopyingSource(**kwargs))


def selective_copying_dataset(**kwargs: Any) -> grain.MapDataset:
  """``grain.MapDataset`` over ``SelectiveCopyingSource(**kwargs)``."""
  return grain.MapDataset.source(SelectiveCopyingSource(**kwargs))
