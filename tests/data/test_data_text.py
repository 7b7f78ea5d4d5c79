"""Byte-level corpus: file listing, split, cap, windows and errors."""

import random
import shutil

import chex
import numpy as np
import pytest

from attnlab.data import text


def _write_corpus(root, num_files=40, seed=0):
  """Writes small text files (+ files that must be skipped); returns {relpath: bytes}."""
  rng = random.Random(seed)
  contents = {}
  for i in range(num_files):
    rel = f"d{i % 3}/sub{i % 2}/file_{i:03d}.txt" if i % 4 else f"top_{i:03d}.txt"
    body = f"<<file-{i:03d}>>\n" + "".join(
        rng.choice("abcdefgh \n") for _ in range(rng.randint(0, 200)))
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body.encode())
    contents[rel] = body.encode()
  (root / "image.bin").write_bytes(b"\x89PNG\x00\x01\x02" * 10)  # binary: skipped
  (root / ".hidden.txt").write_bytes(b"hidden")  # hidden: skipped
  (root / "__pycache__").mkdir()
  (root / "__pycache__" / "x.txt").write_bytes(b"cache")  # skipped
  return contents


def _split_of_markers(data: bytes, contents):
  return {rel for rel, body in contents.items() if body in data}


def test_split_is_deterministic_disjoint_and_covers(tmp_path):
  contents = _write_corpus(tmp_path)
  kw = dict(directory=tmp_path, validation_fraction=0.3)
  files = text.corpus_split_files(**kw)
  again = text.corpus_split_files(**kw)
  assert files == again
  rel = {s: {p.relative_to(tmp_path).as_posix() for p, _ in fs} for s, fs in files.items()}
  assert rel["train"].isdisjoint(rel["validation"])
  assert rel["train"] | rel["validation"] == set(contents)
  assert 0 < len(rel["validation"]) < len(contents)
  # Sorted order of relative paths.
  for fs in files.values():
    names = [p.relative_to(tmp_path).as_posix() for p, _ in fs]
    assert names == sorted(names)

  # The assignment depends on the relative path only: a copy of a subset of
  # the files elsewhere is split the same way.
  other = tmp_path.parent / (tmp_path.name + "_subset")
  subset = sorted(contents)[::3]
  for r in subset:
    (other / r).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / r, other / r)
  sub_files = text.corpus_split_files(directory=other, validation_fraction=0.3)
  for split, fs in sub_files.items():
    for p, _ in fs:
      assert p.relative_to(other).as_posix() in rel[split]


def test_load_corpus_contents(tmp_path):
  contents = _write_corpus(tmp_path)
  train = text.load_byte_corpus("train", directory=tmp_path, validation_fraction=0.3)
  val = text.load_byte_corpus("validation", directory=tmp_path, validation_fraction=0.3)
  chex.assert_type(train, np.uint8)
  chex.assert_rank(train, 1)
  in_train = _split_of_markers(train.tobytes(), contents)
  in_val = _split_of_markers(val.tobytes(), contents)
  assert in_train | in_val == set(contents)
  assert in_train.isdisjoint(in_val)
  for data, members in [(train, in_train), (val, in_val)]:
    # Every file then one separator byte (0), in sorted relative-path order.
    expected = b"".join(contents[r] + b"\0" for r in sorted(members))
    assert data.tobytes() == expected
  assert b"hidden" not in train.tobytes() + val.tobytes()
  assert b"cache" not in train.tobytes() + val.tobytes()
  assert b"PNG" not in train.tobytes() + val.tobytes()


def test_separator_and_file_list(tmp_path):
  a, b = tmp_path / "a.txt", tmp_path / "sub" / "b.txt"
  b.parent.mkdir()
  a.write_bytes(b"hello")
  b.write_bytes(b"world")
  data = text.load_byte_corpus("train", files=[str(b), str(a)],
                               validation_fraction=0.0, separator=ord("\n"))
  assert data.tobytes() == b"hello\nworld\n"


def test_max_mb_caps_total_bytes(tmp_path):
  contents = _write_corpus(tmp_path)
  cap_bytes = 1000
  assert sum(len(v) for v in contents.values()) > cap_bytes
  files = text.corpus_split_files(directory=tmp_path, validation_fraction=0.3,
                                  max_mb=cap_bytes / 2**20)
  assert sum(n for fs in files.values() for _, n in fs) == cap_bytes
  train = text.load_byte_corpus("train", directory=tmp_path, validation_fraction=0.3,
                                max_mb=cap_bytes / 2**20)
  val = text.load_byte_corpus("validation", directory=tmp_path,
                              validation_fraction=0.3, max_mb=cap_bytes / 2**20)
  num_files = sum(len(fs) for fs in files.values())
  assert len(train) + len(val) == cap_bytes + num_files


@pytest.mark.parametrize("seq_len", [1, 7, 64])
def test_windows_reassemble(seq_len):
  data = np.frombuffer(bytes(range(256)) * 3 + b"tail", dtype=np.uint8)
  src = text.ByteWindowSource(data, seq_len)
  n = (len(data) - 1) // seq_len
  assert len(src) == n
  pieces = []
  for i in range(n):
    ex = src[i]
    chex.assert_shape([ex["inputs"], ex["targets"]], (seq_len,))
    chex.assert_type([ex["inputs"], ex["targets"]], np.int32)
    chex.assert_type(ex["weights"], np.float32)
    chex.assert_trees_all_equal(ex["weights"], np.ones_like(ex["weights"]))
    chex.assert_trees_all_equal(ex["inputs"][1:], ex["targets"][:-1])
    if i + 1 < n:  # last target of window i is the first input of window i + 1
      assert ex["targets"][-1] == src[i + 1]["inputs"][0]
    pieces.append(ex["inputs"])
  pieces.append(src[n - 1]["targets"][-1:])
  chex.assert_trees_all_equal(np.concatenate(pieces), data[:n * seq_len + 1])


def test_byte_lm_dataset_on_folder(tmp_path):
  _write_corpus(tmp_path)
  ds = text.byte_lm_dataset("train", seq_len=16, directory=tmp_path,
                            validation_fraction=0.3)
  data = text.load_byte_corpus("train", directory=tmp_path, validation_fraction=0.3)
  assert len(ds) == (len(data) - 1) // 16
  chex.assert_trees_all_equal(ds[3]["inputs"], data[48:64])


def test_stdlib_default_corpus():
  root, files = text.list_corpus_files()
  assert root == text.stdlib_dir()
  assert len(files) > 50
  for p in files[:: max(1, len(files) // 200)]:
    rel_parts = p.relative_to(root).parts
    assert p.suffix == ".py"
    assert not {"site-packages", "test", "tests"} & set(rel_parts[:-1])
  kw = dict(max_mb=1.0, validation_fraction=0.1)
  val = text.load_byte_corpus("validation", **kw)
  train = text.load_byte_corpus("train", **kw)
  assert 0 < len(val) < len(train)
  assert len(train) + len(val) <= 2**20 + len(files)
  chex.assert_trees_all_equal(val, text.load_byte_corpus("validation", **kw))
  assert b"import " in train.tobytes()


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="directory"):
    text.load_byte_corpus("train", directory=tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="files"):
    text.load_byte_corpus("train", files=[str(tmp_path / "missing.txt")])
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="no files"):
    text.load_byte_corpus("train", directory=empty)
  binary = tmp_path / "binary"
  binary.mkdir()
  (binary / "a.bin").write_bytes(b"\x00\x01")
  with pytest.raises(ValueError, match="binary"):
    text.load_byte_corpus("train", directory=binary)
  blank = tmp_path / "blank"
  blank.mkdir()
  (blank / "a.txt").write_bytes(b"")
  with pytest.raises(ValueError, match="no text"):
    text.load_byte_corpus("train", directory=blank, validation_fraction=0.0)
  one = tmp_path / "one"
  one.mkdir()
  (one / "a.txt").write_bytes(b"abc")
  with pytest.raises(ValueError, match="'validation' split .* no files"):
    text.load_byte_corpus("validation", directory=one, validation_fraction=0.0)
  with pytest.raises(ValueError, match="seq_len"):
    text.byte_lm_dataset("train", seq_len=8, directory=one, validation_fraction=0.0)
  with pytest.raises(ValueError, match="split"):
    text.load_byte_corpus("test", directory=one)
  with pytest.raises(ValueError, match="validation_fraction"):
    text.load_byte_corpus("train", directory=one, validation_fraction=1.5)
  with pytest.raises(ValueError, match="at most one"):
    text.load_byte_corpus("train", directory=one, files=[str(one / "a.txt")])
  with pytest.raises(TypeError, match="data"):
    text.ByteWindowSource(np.zeros(10, np.int32), 4)


def _find_repeat(window, lo, hi):
  """(p, L) of the first ``w[p:p+L] == w[p+L:p+2L]`` with L in [lo, hi], longest L first."""
  for length in range(hi, lo - 1, -1):
    for p in range(len(window) - 2 * length + 1):
      if np.array_equal(window[p:p + length], window[p + length:p + 2 * length]):
        return p, length
  return None


def test_bos_windows_cover_the_data():
  data = np.frombuffer(bytes(range(1, 256)) * 3, dtype=np.uint8)
  seq_len = 16
  src = text.ByteWindowSource(data, seq_len, bos=0)
  targets = []
  for i in range(len(src)):
    ex = src[i]
    assert ex["inputs"][0] == 0
    chex.assert_trees_all_equal(ex["inputs"][1:], ex["targets"][:-1])
    targets.append(ex["targets"])
  # Every byte is predicted once, in order (the BOS takes the place of the previous byte).
  chex.assert_trees_all_equal(np.concatenate(targets), data[:len(src) * seq_len])


def test_repeat_edit_writes_a_printable_string_twice():
  rng = np.random.default_rng(1)
  data = rng.integers(128, 256, size=8000).astype(np.uint8)   # never printable ASCII
  seq_len, lo, hi = 128, 8, 24
  plain = text.ByteWindowSource(data, seq_len, bos=7)
  src = text.ByteWindowSource(data, seq_len, bos=7, repeat_prob=1.0, repeat_len=(lo, hi),
                              repeat_seed=3)
  lengths = set()
  for i in range(len(src)):
    before = np.concatenate([plain[i]["inputs"], plain[i]["targets"][-1:]])
    after = np.concatenate([src[i]["inputs"], src[i]["targets"][-1:]])
    changed = np.flatnonzero(before != after)
    p, length = _find_repeat(after, lo, hi)
    lengths.add(length)
    assert after[0] == 7 and p >= 1
    assert np.all((after[p:p + 2 * length] >= 32) & (after[p:p + 2 * length] < 127))
    # Only the two copies changed; the rest of the window is the corpus.
    assert changed.min() >= p and changed.max() < p + 2 * length
    chex.assert_trees_all_equal(src[i]["inputs"], src[i]["inputs"])
  assert len(lengths) > 3 and min(lengths) >= lo and max(lengths) <= hi
  other = text.ByteWindowSource(data, seq_len, bos=7, repeat_prob=1.0, repeat_len=(lo, hi),
                                repeat_seed=4)
  assert any(not np.array_equal(src[i]["inputs"], other[i]["inputs"]) for i in range(5))
  again = text.ByteWindowSource(data, seq_len, bos=7, repeat_prob=1.0, repeat_len=(lo, hi),
                                repeat_seed=3)
  chex.assert_trees_all_equal(src[2], again[2])


def test_repeat_prob_is_the_fraction_of_edited_windows():
  data = np.full(64 * 801, 200, dtype=np.uint8)
  src = text.ByteWindowSource(data, 64, repeat_prob=0.3, repeat_len=(4, 8))
  edited = sum(bool(np.any(src[i]["inputs"] != 200)) for i in range(len(src)))
  # 800 Bernoulli(0.3) draws: mean 240, std 13; 5 std either side.
  assert 175 < edited < 305, edited
  val = text.ByteWindowSource(data, 64, repeat_prob=0.3, repeat_len=(4, 8),
                              split="validation")
  assert any(not np.array_equal(src[i]["inputs"], val[i]["inputs"]) for i in range(20))


def test_window_edit_errors():
  data = np.zeros(100, np.uint8)
  with pytest.raises(ValueError, match="bos"):
    text.ByteWindowSource(data, 8, bos=256)
  with pytest.raises(ValueError, match="repeat_prob"):
    text.ByteWindowSource(data, 8, repeat_prob=1.5)
  with pytest.raises(ValueError, match=r"repeat_len\[1\] must be at most 4"):
    text.ByteWindowSource(data, 8, bos=0, repeat_prob=0.5, repeat_len=(2, 5))
  with pytest.raises(TypeError, match="repeat_len"):
    text.ByteWindowSource(data, 8, repeat_prob=0.5, repeat_len=3)
  with pytest.raises(ValueError, match="split"):
    text.ByteWindowSource(data, 8, split="test")
