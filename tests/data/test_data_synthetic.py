"""Task logic, determinism and argument checks of attnlab.data.synthetic."""

import chex
import numpy as np
import pytest

from attnlab.data import synthetic
from attnlab.data.synthetic import (PAD_ID, SEP_ID, CopyingSource, MQARSource,
                                    SelectiveCopyingSource)


def _check_lm_format(ex, seq_len):
  assert set(ex) == {"inputs", "targets", "weights"}
  for key, dtype in [("inputs", np.int32), ("targets", np.int32),
                     ("weights", np.float32)]:
    chex.assert_shape(ex[key], (seq_len,), custom_message=key)
    chex.assert_type(ex[key], dtype, custom_message=key)
  assert set(np.unique(ex["weights"])) <= {0.0, 1.0}


def _check_unweighted_targets_are_next_tokens(ex):
  w, x, y = ex["weights"], ex["inputs"], ex["targets"]
  for t in range(len(x) - 1):
    if w[t] == 0:
      assert y[t] == x[t + 1], t
  if w[-1] == 0:
    assert y[-1] == PAD_ID


@pytest.mark.parametrize("distribution", ["power_law", "uniform"])
@pytest.mark.parametrize("random_non_queries", [True, False])
@pytest.mark.parametrize("num_queries", [None, 3])
def test_mqar_logic(distribution, random_non_queries, num_queries):
  vocab, seq_len, kv = 64, 48, 6
  src = MQARSource(seq_len=seq_len, vocab_size=vocab, num_kv_pairs=kv,
                   num_examples=20, seed=3, num_queries=num_queries,
                   query_distribution=distribution,
                   random_non_queries=random_non_queries)
  expected_queries = kv if num_queries is None else num_queries
  for i in range(len(src)):
    ex = src[i]
    _check_lm_format(ex, seq_len)
    x, y, w = ex["inputs"], ex["targets"], ex["weights"]
    keys, values = x[0:2 * kv:2], x[1:2 * kv:2]
    # Keys / values: distinct, from disjoint halves of the vocab.
    assert len(set(keys.tolist())) == kv and len(set(values.tolist())) == kv
    assert all(1 <= k < vocab // 2 for k in keys)
    assert all(vocab // 2 <= v < vocab for v in values)
    weighted = [t for t in range(seq_len) if w[t] == 1.0]
    assert len(weighted) == expected_queries
    queried = []
    for t in weighted:
      assert t >= 2 * kv and (t - 2 * kv) % 2 == 0
      # Naive recall: the value right after the first occurrence of the key.
      j = next(j for j in range(t) if x[j] == x[t])
      assert j < 2 * kv and j % 2 == 0
      assert y[t] == x[j + 1]
      queried.append(int(x[t]))
    assert len(set(queried)) == len(queried)
    _check_unweighted_targets_are_next_tokens(ex)
    if not random_non_queries:
      query_region = [x[t] for t in range(2 * kv, seq_len) if t not in weighted]
      assert all(tok == PAD_ID for tok in query_region)


def test_mqar_power_law_favours_queries_near_context():
  kw = dict(seq_len=256, vocab_size=512, num_kv_pairs=8, num_examples=200, seed=0)

  def mean_query_pos(distribution):
    src = MQARSource(query_distribution=distribution, **kw)
    return np.mean([np.flatnonzero(src[i]["weights"]).mean() for i in range(len(src))])

  ctx = 2 * kw["num_kv_pairs"]
  uniform, power = mean_query_pos("uniform") - ctx, mean_query_pos("power_law") - ctx
  # Uniform over 120 slots of width 2: mean offset about 119.
  assert 100 < uniform < 140
  assert power < 0.6 * uniform


@pytest.mark.parametrize("copy_len", [None, 5])
def test_copying_logic(copy_len):
  seq_len, vocab = 24, 10
  src = CopyingSource(seq_len=seq_len, vocab_size=vocab, num_examples=20, seed=1,
                      copy_len=copy_len)
  n = seq_len // 2 if copy_len is None else copy_len
  for i in range(len(src)):
    ex = src[i]
    _check_lm_format(ex, seq_len)
    x, y, w = ex["inputs"].tolist(), ex["targets"].tolist(), ex["weights"]
    sep = x.index(SEP_ID)
    assert sep == n
    content = x[:sep]
    assert all(2 <= c < vocab for c in content)
    weighted = [t for t in range(seq_len) if w[t] == 1.0]
    assert weighted == list(range(sep, sep + n))
    assert [y[t] for t in weighted] == content
    copied = x[sep + 1:2 * n + 1]  # the answer is teacher-forced after SEP
    assert copied == content[:len(copied)] and len(copied) >= n - 1
    assert all(tok == PAD_ID for tok in x[2 * n + 1:])
    _check_unweighted_targets_are_next_tokens(ex)


def test_selective_copying_logic():
  seq_len, vocab, n = 40, 8, 6
  src = SelectiveCopyingSource(seq_len=seq_len, vocab_size=vocab, num_examples=30,
                               seed=2, num_tokens_to_copy=n)
  for i in range(len(src)):
    ex = src[i]
    _check_lm_format(ex, seq_len)
    x, y, w = ex["inputs"].tolist(), ex["targets"].tolist(), ex["weights"]
    assert x.count(SEP_ID) == 1
    sep = x.index(SEP_ID)
    assert sep == seq_len - n
    content = [tok for tok in x[:sep] if tok != PAD_ID]
    assert len(content) == n
    assert all(2 <= c < vocab for c in content)
    weighted = [t for t in range(seq_len) if w[t] == 1.0]
    assert weighted == list(range(sep, seq_len))
    assert [y[t] for t in weighted] == content
    _check_unweighted_targets_are_next_tokens(ex)


@pytest.mark.parametrize("cls,kw", [
    (MQARSource, dict(num_kv_pairs=4)),
    (CopyingSource, {}),
    (SelectiveCopyingSource, dict(num_tokens_to_copy=4)),
])
def test_determinism_by_seed_split_and_index(cls, kw):
  common = dict(seq_len=32, vocab_size=40, num_examples=10, **kw)
  a, b = cls(seed=5, **common), cls(seed=5, **common)
  order = [7, 2, 9, 0, 2]
  first = {i: a[i] for i in order}
  for i in reversed(range(10)):  # random access: order of access is irrelevant
    if i in first:
      for k in first[i]:
        chex.assert_trees_all_equal(first[i][k], b[i][k])
  other_seed = cls(seed=6, **common)
  other_split = cls(seed=5, split="validation", **common)
  for other in (other_seed, other_split):
    assert any(not np.array_equal(a[i]["inputs"], other[i]["inputs"])
               for i in range(10))
  assert not np.array_equal(a[0]["inputs"], a[1]["inputs"])
  chex.assert_trees_all_equal(a[-1]["inputs"], a[9]["inputs"])
  with pytest.raises(IndexError, match="index"):
    a[10]


def test_datasets_are_grain_map_datasets():
  ds = synthetic.copying_dataset(seq_len=8, vocab_size=5, num_examples=6, seed=0)
  assert len(ds) == 6
  src = CopyingSource(seq_len=8, vocab_size=5, num_examples=6, seed=0)
  chex.assert_trees_all_equal(ds[4]["inputs"], src[4]["inputs"])
  shuffled = ds.shuffle(seed=1)
  assert sorted(e["inputs"].tobytes() for e in shuffled) == sorted(
      src[i]["inputs"].tobytes() for i in range(6))


@pytest.mark.parametrize("make,exc,match", [
    (lambda: MQARSource(seq_len=32, vocab_size=8, num_kv_pairs=4, num_examples=1),
     ValueError, "vocab_size"),
    (lambda: MQARSource(seq_len=15, vocab_size=64, num_kv_pairs=4, num_examples=1),
     ValueError, "seq_len"),
    (lambda: MQARSource(seq_len=32, vocab_size=64, num_kv_pairs=4, num_examples=1,
                        query_distribution="zipf"), ValueError, "query_distribution"),
    (lambda: MQARSource(seq_len=32, vocab_size=64, num_kv_pairs=4, num_examples=1,
                        num_queries=5), ValueError, "num_queries"),
    (lambda: MQARSource(seq_len=32.0, vocab_size=64, num_kv_pairs=4, num_examples=1),
     TypeError, "seq_len"),
    (lambda: CopyingSource(seq_len=10, vocab_size=8, num_examples=1, copy_len=6),
     ValueError, "copy_len"),
    (lambda: CopyingSource(seq_len=10, vocab_size=2, num_examples=1),
     ValueError, "vocab_size"),
    (lambda: SelectiveCopyingSource(seq_len=10, vocab_size=8, num_examples=1,
                                    num_tokens_to_copy=6), ValueError, "num_tokens_to_copy"),
    (lambda: CopyingSource(seq_len=10, vocab_size=8, num_examples=0),
     ValueError, "num_examples"),
    (lambda: CopyingSource(seq_len=10, vocab_size=8, num_examples=2, seed=-1),
     ValueError, "seed"),
])
def test_argument_errors(make, exc, match):
  with pytest.raises(exc, match=match):
    make()
