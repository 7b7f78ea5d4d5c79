"""TFDS data_source wrapping, tested with tfds.testing.mock_data (no TensorFlow)."""

import subprocess
import sys

import chex
import numpy as np
import pytest

from attnlab import data as attn_data
from attnlab.data import tfds_source

tfds = pytest.importorskip("tensorflow_datasets")

NUM = 11


def _padded(b: bytes, n: int) -> list[int]:
  b = b[:n]
  return list(b) + [0] * (n - len(b))


def test_importing_attnlab_data_imports_no_tensorflow():
  code = ("import sys, attnlab.data; "
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_classification_examples_match_raw_source():
  seq_len = 12
  with tfds.testing.mock_data(num_examples=NUM):
    raw = tfds.data_source("imdb_reviews", split="train")
    ds = tfds_source.tfds_dataset("imdb_reviews", "train", seq_len=seq_len,
                                  fmt="classification")
    assert len(ds) == NUM
    for i in range(NUM):
      ex, r = ds[i], raw[i]
      b = r["text"].encode("utf-8") if isinstance(r["text"], str) else bytes(r["text"])
      chex.assert_type(ex["inputs"], np.int32)
      chex.assert_shape(ex["inputs"], (seq_len,))
      chex.assert_trees_all_equal(ex["inputs"], np.asarray(_padded(b, seq_len)))
      chex.assert_type(ex["label"], np.int32)
      chex.assert_shape(ex["label"], ())
      assert int(ex["label"]) == int(r["label"])
      chex.assert_type(ex["weights"], np.float32)
      chex.assert_trees_all_equal(ex["weights"], np.asarray(
          [1.0] * min(len(b), seq_len) + [0.0] * max(0, seq_len - len(b))))


def test_lm_examples_match_raw_source():
  seq_len = 12
  with tfds.testing.mock_data(num_examples=NUM):
    raw = tfds.data_source("imdb_reviews", split="test")
    ds = tfds_source.tfds_dataset("imdb_reviews", "test", seq_len=seq_len, fmt="lm")
    for i in range(NUM):
      ex = ds[i]
      b = raw[i]["text"]
      b = b.encode("utf-8") if isinstance(b, str) else bytes(b)
      full = _padded(b, seq_len + 1)
      chex.assert_trees_all_equal(ex["inputs"], np.asarray(full[:-1]))
      chex.assert_trees_all_equal(ex["targets"], np.asarray(full[1:]))
      n_real_targets = min(len(b), seq_len + 1) - 1
      chex.assert_trees_all_equal(ex["weights"], np.asarray(
          [1.0] * n_real_targets + [0.0] * (seq_len - n_real_targets)))


def test_bytes_and_unicode_text_via_custom_data_source():
  records = [{"text": "héllo wörld".encode("utf-8"), "label": np.int64(1)},
             {"text": np.bytes_(b"ab"), "label": np.int64(0)},
             {"text": np.array("z\u20ac", dtype=object), "label": np.int64(1)}]

  def as_data_source(self, split, **kwargs):
    del self, split, kwargs
    return records

  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    ds = tfds_source.tfds_dataset("imdb_reviews", "train", seq_len=6,
                                  fmt="classification")
    chex.assert_trees_all_equal(ds[0]["inputs"],
                                np.asarray(list("héllo wörld".encode("utf-8")[:6])))
    chex.assert_trees_all_equal(ds[1]["inputs"], np.asarray([97, 98, 0, 0, 0, 0]))
    chex.assert_trees_all_equal(ds[2]["inputs"], np.asarray(_padded("z\u20ac".encode("utf-8"), 6)))
    assert [int(ds[i]["label"]) for i in range(3)] == [1, 0, 1]


def test_pipeline_tfds_validation_batches_cover_split_in_order():
  cfg = attn_data.default_data_config("tfds")
  cfg.seq_len = 10
  with tfds.testing.mock_data(num_examples=NUM):
    raw = tfds.data_source("imdb_reviews", split="test")
    expected = [(_padded(raw[i]["text"].encode(), 10), int(raw[i]["label"]))
                for i in range(NUM)]
    batches = list(attn_data.make_dataset(cfg, "validation", global_batch_size=4, seed=0))
    assert attn_data.num_classes(cfg) == 2
  assert len(batches) == 3  # ceil(11 / 4), last one zero-padded
  got = []
  for b in batches:
    chex.assert_shape(b["inputs"], (4, 10))
    chex.assert_shape(b["label"], (4,))
    for inp, lab, w in zip(b["inputs"], b["label"], b["weights"]):
      if w.sum() > 0:
        got.append((inp.tolist(), int(lab)))
      else:
        assert not inp.any() and lab == 0
  assert got == expected
  assert attn_data.vocab_size(cfg) == 256


def test_text_feature_errors():
  to_lm = tfds_source.TextToLM(4, text_key="text")
  with pytest.raises(KeyError, match="'text'"):
    to_lm({"sentence": "abc"})
  with pytest.raises(TypeError, match="text"):
    to_lm({"text": 3})
  to_cls = tfds_source.TextToClassification(4)
  with pytest.raises(TypeError, match="label"):
    to_cls({"text": "a", "label": np.float32(0.5)})
  with pytest.raises(ValueError, match="tfds_format"):
    tfds_source.tfds_dataset("imdb_reviews", "train", seq_len=4, fmt="seq2seq")
