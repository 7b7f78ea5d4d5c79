"""TFDS datasets read with ``tfds.data_source`` (ArrayRecord, no TensorFlow).

``tfds.data_source(name, split=..., data_dir=...)`` gives a random-access
source of decoded numpy examples; it is wrapped into a ``grain.MapDataset`` and
each example is mapped to byte-level (UTF-8, ``vocab_size = 256``) arrays:

* ``fmt="lm"`` (``TextToLM``): the first ``seq_len + 1`` bytes ``b`` of the
  text feature, right-padded with ``PAD_BYTE``; ``inputs = b[:-1]``,
  ``targets = b[1:]`` (int32 [seq_len]); ``weights`` (float32 [seq_len]) is 1
  where the target is a real byte.
* ``fmt="classification"`` (``TextToClassification``): ``inputs`` = the first
  ``seq_len`` bytes, right-padded (int32 [seq_len]); ``label`` int32 [];
  ``weights`` float32 [seq_len], 1 on real bytes.

``tensorflow_datasets`` is imported lazily, inside the functions, so importing
``attnlab.data`` imports neither TFDS nor TensorFlow. Reading needs no
TensorFlow, but the dataset should already be prepared in ArrayRecord format in
``data_dir`` (``tfds build --file_format=array_record``, on a machine with
TensorFlow): ``tfds.data_source`` otherwise tries to download and prepare it,
which for most datasets needs TensorFlow.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from attnlab.data._checks import check_choice, check_int

PAD_BYTE = 0
TFDS_FORMATS = ("lm", "classification")


def text_to_bytes(value: Any, *, key: str = "text") -> bytes:
  """UTF-8 bytes of a decoded TFDS text feature (str, bytes or 0-d array)."""
  if isinstance(value, np.ndarray):
    if value.ndim != 0:
      raise TypeError(
          f"feature {key!r} must be a scalar text feature, got an array of "
          f"shape {value.shape} and dtype {value.dtype}.")
    value = value.item()
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value)
  if isinstance(value, str):
    return value.encode("utf-8")
  raise TypeError(
      f"feature {key!r} must be text (str or bytes), got {type(value).__name__}.")


def _padded_bytes(data: bytes, length: int) -> tuple[np.ndarray, int]:
  """(int32 [length] bytes right-padded with PAD_BYTE, number of real bytes)."""
  arr = np.full(length, PAD_BYTE, dtype=np.int32)
  chunk = np.frombuffer(data[:length], dtype=np.uint8)
  arr[:len(chunk)] = chunk
  return arr, len(chunk)


def _get_feature(example: Any, key: str) -> Any:
  if not isinstance(example, dict) or key not in example:
    keys = sorted(example) if isinstance(example, dict) else type(example).__name__
    raise KeyError(f"feature {key!r} not in the TFDS example; available: {keys}.")
  return example[key]


class TextToLM:
  """Maps a TFDS example to a byte-level LM example (see the module docstring)."""

  def __init__(self, seq_len: int, text_key: str = "text"):
    self.seq_len = check_int("seq_len", seq_len, minimum=1)
    self.text_key = text_key

  def __call__(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
    data = text_to_bytes(_get_feature(example, self.text_key), key=self.text_key)
    tokens, n = _padded_bytes(data, self.seq_len + 1)
    weights = (np.arange(self.seq_len) < n - 1).astype(np.float32)
    return {"inputs": tokens[:-1], "targets": tokens[1:], "weights": weights}


class TextToClassification:
  """Maps a TFDS (text, label) example to a classification example."""

  def __init__(self, seq_len: int, text_key: str = "text", label_key: str = "label"):
    self.seq_len = check_int("seq_len", seq_len, minimum=1)
    self.text_key = text_key
    self.label_key = label_key

  def __call__(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
    data = text_to_bytes(_get_feature(example, self.text_key), key=self.text_key)
    tokens, n = _padded_bytes(data, self.seq_len)
    label = np.asarray(_get_feature(example, self.label_key))
    if label.ndim != 0 or not np.issubdtype(label.dtype, np.integer):
      raise TypeError(
          f"feature {self.label_key!r} must be an integer scalar, got dtype "
          f"{label.dtype} and shape {label.shape}.")
    weights = (np.arange(self.seq_len) < n).astype(np.float32)
    return {"inputs": tokens, "label": label.astype(np.int32), "weights": weights}


def tfds_data_source(name: str, split: str, *, data_dir: str | None = None) -> Any:
  """``tfds.data_source(name, split=split, data_dir=data_dir)`` (lazy TFDS import)."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"tfds_name must be a non-empty str, got {name!r}.")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.data_source(name, split=split, data_dir=data_dir or None)


def tfds_dataset(name: str, split: str, *, seq_len: int, data_dir: str | None = None,
                 fmt: str = "lm", text_key: str = "text",
                 label_key: str = "label") -> grain.MapDataset:
  """``grain.MapDataset`` of byte-level examples of a TFDS split.

  Args:
    name: TFDS name, e.g. "imdb_reviews" or "imdb_reviews/plain_text:1.0.0".
    split: TFDS split string, e.g. "train", "test[:10%]".
    seq_len: example length.
    data_dir: TFDS data dir (None: TFDS default).
    fmt: "lm" or "classification".
    text_key / label_key: feature names of the text and the label.
  """
  check_choice("tfds_format", fmt, TFDS_FORMATS)
  seq_len = check_int("seq_len", seq_len, minimum=1)
  source = tfds_data_source(name, split, data_dir=data_dir)
  if len(source) == 0:
    raise ValueError(f"TFDS dataset {name!r} split {split!r} has no examples.")
  if fmt == "lm":
    transform = TextToLM(seq_len, text_key)
  else:
    transform = TextToClassification(seq_len, text_key, label_key)
  return grain.MapDataset.source(source).map(transform)


def tfds_num_classes(name: str, *, label_key: str = "label",
                     data_dir: str | None = None) -> int:
  """``num_classes`` of the ClassLabel feature `label_key` of a TFDS dataset."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  features = tfds.builder(name, data_dir=data_dir or None).info.features
  if label_key not in features:
    raise KeyError(
        f"label_key {label_key!r} is not a feature of {name!r}; features: "
        f"{sorted(features.keys())}.")
  num_classes = getattr(features[label_key], "num_classes", None)
  if not num_classes:
    raise ValueError(
        f"feature {label_key!r} of {name!r} is not a ClassLabel, set num_classes.")
  return int(num_classes)
