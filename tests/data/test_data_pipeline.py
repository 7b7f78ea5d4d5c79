"""make_dataset: config handling, sharding, batching, epochs, iterator checkpoints."""

import json

import chex
import grain
import ml_collections
import numpy as np
import pytest

from attnlab import data as attn_data
from attnlab.data import pipeline


def _mqar_cfg(**overrides):
  cfg = attn_data.default_data_config("mqar")
  cfg.update(dict(seq_len=16, vocab_size=32, num_kv_pairs=2,
                  num_train_examples=24, num_validation_examples=10,
                  read_num_threads=1, read_prefetch_buffer_size=2))
  cfg.update(overrides)
  return cfg


def _key(inputs, targets):
  return inputs.tobytes() + targets.tobytes()


def _source_keys(cfg, split):
  src = attn_data.source_dataset(cfg, split)
  return [_key(src[i]["inputs"], src[i]["targets"]) for i in range(len(src))]


def _batch_keys(batches):
  return [_key(x, y) for b in batches for x, y in zip(b["inputs"], b["targets"])]


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  # Same number of batches, same keys, exactly equal arrays.
  chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize("name", ["mqar", "copying", "selective_copying"])
def test_batch_shapes_and_dtypes(name):
  cfg = attn_data.default_data_config(name)
  cfg.seq_len = 64
  cfg.read_num_threads = 0
  ds = attn_data.make_dataset(cfg, "train", global_batch_size=4, seed=0)
  assert isinstance(ds, grain.IterDataset)
  batch = next(iter(ds))
  assert set(batch) == {"inputs", "targets", "weights"}
  chex.assert_shape([batch["inputs"], batch["targets"], batch["weights"]], (4, 64))
  chex.assert_type([batch["inputs"], batch["targets"]], np.int32)
  chex.assert_type(batch["weights"], np.float32)
  assert batch["inputs"].max() < attn_data.vocab_size(cfg)
  assert batch["weights"].sum() > 0


def test_bytes_pipeline_on_tmp_folder(tmp_path):
  for i in range(12):
    (tmp_path / f"f{i}.txt").write_text(f"file {i}: " + "lorem ipsum " * 20)
  cfg = attn_data.default_data_config("bytes")
  cfg.update(dict(dir=str(tmp_path), seq_len=32, validation_fraction=0.3))
  assert attn_data.vocab_size(cfg) == 256
  batch = next(iter(attn_data.make_dataset(cfg, "train", global_batch_size=2, seed=1)))
  chex.assert_shape(batch["inputs"], (2, 32))
  chex.assert_type(batch["inputs"], np.int32)
  chex.assert_trees_all_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  val = list(attn_data.make_dataset(cfg, "validation", global_batch_size=2, seed=1))
  assert val
  chex.assert_shape([b["inputs"] for b in val], (2, 32))


def test_bytes_window_edits_from_the_config(tmp_path):
  for i in range(12):
    (tmp_path / f"f{i}.txt").write_text(f"file {i}: " + "lorem ipsum " * 20)
  cfg = attn_data.default_data_config("bytes")
  cfg.update(dict(dir=str(tmp_path), seq_len=32, validation_fraction=0.3, bos=0,
                  repeat_prob=1.0, repeat_len=(4, 6)))
  batch = next(iter(attn_data.make_dataset(cfg, "train", global_batch_size=4, seed=1)))
  chex.assert_trees_all_equal(batch["inputs"][:, 0], np.zeros(4, np.int32))
  for inputs, targets in zip(batch["inputs"], batch["targets"]):
    window = np.concatenate([inputs, targets[-1:]])  # the 33 bytes the edit is written into
    # lorem ipsum has no 4-6 byte string written twice in a row
    assert any(np.array_equal(window[p:p + n], window[p + n:p + 2 * n])
               for n in range(4, 7) for p in range(1, 34 - 2 * n))


@pytest.mark.parametrize("num_train", [24, 26])
def test_train_shards_are_disjoint_equal_and_cover(num_train):
  cfg = _mqar_cfg(num_train_examples=num_train)
  shard_count, global_batch = 3, 6
  all_keys = _source_keys(cfg, "train")
  assert len(set(all_keys)) == num_train
  per_host = []
  for shard_index in range(shard_count):
    ds = attn_data.make_dataset(cfg, "train", global_batch_size=global_batch, seed=7,
                                shard_index=shard_index, shard_count=shard_count,
                                num_epochs=1)
    batches = list(ds)
    chex.assert_shape([b["inputs"] for b in batches], (2, 16))
    per_host.append(_batch_keys(batches))
  usable = num_train - num_train % shard_count  # 24 in both cases
  assert [len(k) for k in per_host] == [usable // shard_count] * shard_count
  seen = [k for keys in per_host for k in keys]
  assert len(set(seen)) == len(seen) == usable  # disjoint
  assert set(seen) <= set(all_keys)
  if num_train == usable:
    assert set(seen) == set(all_keys)  # coverage


def test_train_shuffle_determinism_and_epochs():
  cfg = _mqar_cfg()
  all_keys = _source_keys(cfg, "train")

  def run(seed):
    ds = attn_data.make_dataset(cfg, "train", global_batch_size=4, seed=seed,
                                num_epochs=2)
    return _batch_keys(list(ds))

  a, b, c = run(3), run(3), run(4)
  assert a == b
  assert a != c
  assert len(a) == 48
  epoch1, epoch2 = a[:24], a[24:]
  assert sorted(epoch1) == sorted(all_keys) == sorted(epoch2)
  assert epoch1 != all_keys  # shuffled
  assert epoch1 != epoch2  # reshuffled each epoch


def test_train_repeats_forever_by_default():
  cfg = _mqar_cfg(num_train_examples=5)
  it = iter(attn_data.make_dataset(cfg, "train", global_batch_size=4, seed=0))
  keys = _batch_keys(_take(it, 10))  # 40 examples from 5
  assert set(keys) == set(_source_keys(cfg, "train"))


def test_validation_is_ordered_finite_padded_and_sharded():
  cfg = _mqar_cfg()
  all_keys = _source_keys(cfg, "validation")
  assert set(all_keys).isdisjoint(_source_keys(cfg, "train"))
  shard_count = 2
  hosts = []
  for shard_index in range(shard_count):
    batches = list(attn_data.make_dataset(
        cfg, "validation", global_batch_size=4, seed=0, shard_index=shard_index,
        shard_count=shard_count))
    assert len(batches) == 3  # ceil(ceil(10 / 2) / 2)
    real, padded = [], 0
    for b in batches:
      chex.assert_shape(b["inputs"], (2, 16))
      for x, y, w in zip(b["inputs"], b["targets"], b["weights"]):
        if w.any():
          real.append(_key(x, y))
        else:
          assert not x.any() and not y.any()
          padded += 1
    assert padded == 1
    hosts.append(real)
  assert hosts[0] == all_keys[0::2] and hosts[1] == all_keys[1::2]
  # Same seed or not, validation does not change.
  again = list(attn_data.make_dataset(cfg, "validation", global_batch_size=4, seed=9,
                                      shard_count=2))
  assert _batch_keys(again)[:5] == all_keys[0::2]


def test_iterator_state_save_restore():
  cfg = _mqar_cfg()
  ds = attn_data.make_dataset(cfg, "train", global_batch_size=4, seed=1)
  it = iter(ds)
  assert isinstance(it, grain.DatasetIterator)
  _take(it, 5)  # crosses an epoch boundary (6 batches per epoch)
  state = it.get_state()
  state = json.loads(json.dumps(state))  # JSON-serializable
  expected = _take(it, 4)
  fresh = attn_data.data_iterator(cfg, "train", global_batch_size=4, seed=1)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 4), expected)


def test_orbax_checkpoint_roundtrip(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  cfg = _mqar_cfg()
  it = attn_data.data_iterator(cfg, "train", global_batch_size=4, seed=2)
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(3, args=ocp.args.Composite(
        params=ocp.args.StandardSave({"w": np.arange(3.0)}),
        data_iter=attn_data.iterator_checkpoint_args(it)))
    expected = _take(it, 4)  # iterator state was captured at save time
    mngr.wait_until_finished()
    fresh = attn_data.data_iterator(cfg, "train", global_batch_size=4, seed=2)
    restored = mngr.restore(3, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(),
        data_iter=attn_data.iterator_checkpoint_args(fresh, restore=True)))
  chex.assert_trees_all_equal(restored.params["w"], np.arange(3.0))
  _assert_batches_equal(_take(fresh, 4), expected)
  with pytest.raises(TypeError, match="iterator"):
    attn_data.iterator_checkpoint_args([1, 2])


def test_default_configs_and_resolution():
  for name in attn_data.DATASET_NAMES:
    cfg = attn_data.default_data_config(name)
    assert isinstance(cfg, ml_collections.ConfigDict)
    assert cfg.name == name and cfg.seq_len > 0
  assert attn_data.vocab_size({"name": "copying", "vocab_size": 7}) == 7
  assert attn_data.vocab_size(ml_collections.ConfigDict({"name": "bytes"})) == 256
  resolved = attn_data.resolve_config({"name": "mqar", "num_kv_pairs": 3})
  assert resolved.num_kv_pairs == 3 and resolved.vocab_size == 8192


@pytest.mark.parametrize("cfg,kwargs,exc,match", [
    ({"name": "wikitext"}, {}, ValueError, "mqar.*copying.*selective_copying.*bytes.*tfds"),
    ({"vocab_size": 3}, {}, ValueError, "name"),
    ({"name": "mqar", "num_kv_pair": 3}, {}, ValueError, "num_kv_pair"),
    ({"name": "mqar", "seq_len": "long"}, {}, TypeError, "seq_len"),
    ({"name": "copying"}, {"global_batch_size": 6, "shard_count": 4}, ValueError,
     "global_batch_size"),
    ({"name": "copying"}, {"global_batch_size": 0}, ValueError, "global_batch_size"),
    ({"name": "copying"}, {"global_batch_size": 2.0}, TypeError, "global_batch_size"),
    ({"name": "copying"}, {"shard_index": 2, "shard_count": 2}, ValueError, "shard_index"),
    ({"name": "copying"}, {"split": "test"}, ValueError, "split"),
    ({"name": "copying"}, {"seed": -1}, ValueError, "seed"),
    ({"name": "copying"}, {"num_epochs": 0}, ValueError, "num_epochs"),
    ({"name": "copying", "num_train_examples": 3}, {"num_epochs": 1}, ValueError,
     "batch size"),
    ({"name": "bytes", "dir": "/nonexistent/attnlab"}, {}, FileNotFoundError,
     "nonexistent"),
])
def test_errors(cfg, kwargs, exc, match):
  kw = dict(split="train", global_batch_size=4, seed=0)
  kw.update(kwargs)
  split = kw.pop("split")
  with pytest.raises(exc, match=match):
    attn_data.make_dataset(cfg, split, **kw)


def test_default_config_unknown_name():
  with pytest.raises(ValueError, match="one of"):
    pipeline.default_data_config("nope")


def test_validation_with_fewer_examples_than_hosts():
  cfg = {"name": "copying", "seq_len": 8, "vocab_size": 5,
         "num_validation_examples": 1, "read_num_threads": 0}
  real = []
  for shard_index in range(3):
    batches = list(attn_data.make_dataset(cfg, "validation", global_batch_size=3,
                                          seed=0, shard_index=shard_index,
                                          shard_count=3))
    assert len(batches) == 1
    chex.assert_shape(batches[0]["inputs"], (1, 8))
    real.append(int(batches[0]["weights"].any()))
  assert real == [1, 0, 0]
