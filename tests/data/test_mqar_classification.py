"""The synthetic "mqar_classification" task (attnlab.data) used by the pooling-head catalogue
entries: task logic against a naive loop, its pipeline registration and class count."""

import chex
import numpy as np
import pytest

from attnlab import data as attn_data
from attnlab.data.synthetic import PAD_ID, MQARClassificationSource


@pytest.mark.parametrize("num_queries,random_non_queries", [(0, True), (2, False), (1, True)])
def test_mqar_classification_logic(num_queries, random_non_queries):
  vocab, seq_len, kv = 40, 24, 5
  src = MQARClassificationSource(seq_len=seq_len, vocab_size=vocab, num_kv_pairs=kv,
                                 num_examples=25, seed=1, num_queries=num_queries,
                                 random_non_queries=random_non_queries)
  nq = kv if num_queries == 0 else num_queries
  assert src.num_classes == vocab - vocab // 2
  labels = set()
  for i in range(len(src)):
    ex = src[i]
    assert set(ex) == {"inputs", "weights", "label"}
    x, w, y = ex["inputs"], ex["weights"], ex["label"]
    chex.assert_shape([x, w, y], [(seq_len,), (seq_len,), ()])
    assert x.dtype == np.int32 and w.dtype == np.float32 and y.dtype == np.int32
    assert (w == 1).all()
    keys, values = x[0:2 * kv:2], x[1:2 * kv:2]
    assert len(set(keys.tolist())) == kv and all(1 <= k < vocab // 2 for k in keys)
    assert all(vocab // 2 <= v < vocab for v in values)
    # Naive recall of the final query: the token after its first occurrence in the context.
    final = x[-1]
    j = next(j for j in range(seq_len) if x[j] == final)
    assert j < 2 * kv and j % 2 == 0
    assert y == x[j + 1] - vocab // 2 and 0 <= y < src.num_classes
    labels.add(int(y))
    # Earlier queries (visible without random fillers): distinct keys at even offsets of the
    # query region, never the final key; everything else in the region is padding.
    if not random_non_queries:
      earlier = [t for t in range(2 * kv, seq_len - 1, 2) if x[t] in set(keys.tolist())]
      assert len(earlier) == nq - 1
      assert final not in x[earlier]
      assert len(set(x[earlier].tolist())) == len(earlier)
      rest = [t for t in range(2 * kv, seq_len - 1) if t not in earlier]
      assert (x[rest] == PAD_ID).all()
  assert len(labels) > 1
  # Deterministic per (seed, split, index); splits differ.
  chex.assert_trees_all_equal(src[3]["inputs"], src[3]["inputs"])
  other = MQARClassificationSource(seq_len=seq_len, vocab_size=vocab, num_kv_pairs=kv,
                                   num_examples=25, seed=1, split="validation")
  assert not np.array_equal(other[3]["inputs"], src[3]["inputs"])


def test_mqar_classification_pipeline_and_errors():
  cfg = attn_data.default_data_config("mqar")
  cfg.update(dict(seq_len=16, vocab_size=20, num_kv_pairs=3, num_train_examples=8,
                  num_validation_examples=5, read_num_threads=0))
  cfg.name = "mqar_classification"  # the same keys as "mqar" (how the catalogue switches)
  assert attn_data.num_classes(cfg) == 10 and attn_data.vocab_size(cfg) == 20
  batch = next(iter(attn_data.make_dataset(cfg, "train", global_batch_size=4, seed=0)))
  chex.assert_shape([batch["inputs"], batch["label"]], [(4, 16), (4,)])
  assert (batch["label"] < 10).all()
  val = list(attn_data.make_dataset(cfg, "validation", global_batch_size=4, seed=0))
  assert len(val) == 2 and val[-1]["weights"][1:].sum() == 0  # zero padding, label 0
  with pytest.raises(ValueError, match="seq_len"):
    MQARClassificationSource(seq_len=8, vocab_size=20, num_kv_pairs=3, num_examples=1)
  with pytest.raises(ValueError, match="num_classes needs"):
    attn_data.num_classes({"name": "mqar"})
