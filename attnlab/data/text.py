"""Byte-level language modelling on local text files (``vocab_size = 256``).

Corpus: by default the ``.py`` files of the Python standard library of the
running interpreter (``sysconfig.get_paths()["stdlib"]``, skipping
``site-packages``, ``dist-packages``, ``test``/``tests``/``idle_test`` and
``__pycache__`` folders); any folder (``directory``) or list of files
(``files``) can be given instead.

Construction, all deterministic:

1. List the files in sorted order of relative path (folder: every file below
   it, recursively, whose name matches the fnmatch pattern ``file_pattern``,
   default ``"*.py"`` for the stdlib and ``"*"`` for a user folder; hidden
   files/folders and ``__pycache__`` are skipped, and so are binary files, i.e.
   with a NUL byte in their first 8 KiB, in a user folder).
2. Cap the corpus at ``max_mb`` MiB of file bytes, in that order (the last
   file kept may be cut).
3. Split by a stable hash of the relative path (md5 of the POSIX path relative
   to the folder, or to the common parent of a file list): a file goes to
   "validation" iff ``md5 / 2**64 < validation_fraction``, else to "train".
4. Concatenate a split's files into one uint8 array, each file followed by
   ``separator`` (default 0).

Examples are windows ``data[i * seq_len : i * seq_len + seq_len + 1]`` for
``i < (len(data) - 1) // seq_len`` (stride ``seq_len``): ``inputs = w[:-1]``,
``targets = w[1:]`` (int32 [seq_len]), ``weights`` all 1.0 (float32
[seq_len]). Only the requested split's files are read; nothing is cached.

Two optional window edits (``byte_lm_dataset``/``ByteWindowSource`` arguments, data config
keys of the same name), made for studying in-context copying (induction heads, Olsson et al.
arXiv 2209.11895) and first-token attention sinks (Xiao et al. arXiv 2309.17453):

* ``bos`` (>= 0): every window starts with this byte, ``w = [bos] + data[start : start +
  seq_len]``, so position 0 is the same token in every example (the tokenizers' BOS).
* ``repeat_prob`` (> 0): with this probability per window, a string ``r`` of ``L`` random
  printable bytes (32..126, ``L`` uniform in ``repeat_len = (lo, hi)``) is written twice in a
  row at a random position after the BOS (``w[p : p + 2L] = r r``), so the second copy can
  only be predicted by copying from context. Drawn from ``(repeat_seed, split, index)``:
  deterministic, and the same window always gets the same edit.
"""

from __future__ import annotations

import fnmatch
import hashlib
import operator
import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import grain
import numpy as np

from attnlab.data._checks import check_choice, check_float, check_int

BYTE_VOCAB_SIZE = 256
SPLITS = ("train", "validation")
_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
_BINARY_PROBE_BYTES = 8192


def stdlib_dir() -> Path:
  """Folder of the running interpreter's standard library."""
  return Path(sysconfig.get_paths()["stdlib"])


def _is_binary(path: Path) -> bool:
  with open(path, "rb") as f:
    return b"\0" in f.read(_BINARY_PROBE_BYTES)


def _list_dir(directory: Path, file_pattern: str, skip_dirs: frozenset[str]) -> list[Path]:
  """Files below `directory` whose name matches `file_pattern`, sorted by relative path."""
  paths = []
  for dirpath, dirnames, filenames in os.walk(directory):
    dirnames[:] = [d for d in dirnames if d not in skip_dirs and not d.startswith(".")]
    for name in filenames:
      if name.startswith(".") or not fnmatch.fnmatchcase(name, file_pattern):
        continue
      p = Path(dirpath) / name
      if p.is_file():
        paths.append(p)
  return sorted(paths, key=lambda p: p.relative_to(directory).as_posix())


def list_corpus_files(*, files: Sequence[str | os.PathLike] | None = None,
                      directory: str | os.PathLike | None = None,
                      file_pattern: str | None = None) -> tuple[Path, list[Path]]:
  """Returns ``(root, sorted files)`` of the corpus; see the module docstring.

  At most one of ``files`` and ``directory`` may be given; neither means the
  stdlib. Raises FileNotFoundError for missing paths and ValueError when no
  file is found. Binary files are filtered later, in `corpus_split_files`.
  """
  if files and directory:
    raise ValueError(
        f"give at most one of files and directory, got files={list(files)!r} "
        f"and directory={str(directory)!r}.")
  if files:
    if isinstance(files, (str, os.PathLike)):
      files = [files]
    paths = [Path(f).expanduser() for f in files]
    for p in paths:
      if not p.is_file():
        raise FileNotFoundError(f"files: {str(p)!r} does not exist or is not a file.")
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    out = sorted(set(resolved), key=lambda p: p.relative_to(root).as_posix())
    return root, out
  if directory:
    root = Path(directory).expanduser()
    if not root.is_dir():
      raise FileNotFoundError(
          f"directory: {str(root)!r} does not exist or is not a folder.")
    pattern = file_pattern or "*"
    out = _list_dir(root, pattern, frozenset({"__pycache__"}))
    if not out:
      raise ValueError(
          f"directory: no files matching file_pattern={pattern!r} in {str(root)!r}.")
    return root, out
  root = stdlib_dir()
  pattern = file_pattern or "*.py"
  out = _list_dir(root, pattern, _SKIP_DIRS)
  if not out:
    raise ValueError(
        f"no files matching file_pattern={pattern!r} in the stdlib folder {str(root)!r}.")
  return root, out


def file_split(relative_path: str, validation_fraction: float) -> str:
  """"validation" or "train" for a POSIX relative path, by a stable md5 hash."""
  digest = hashlib.md5(relative_path.encode("utf-8")).digest()
  u = int.from_bytes(digest[:8], "big") / 2.0**64
  return "validation" if u < validation_fraction else "train"


def corpus_split_files(*, files: Sequence[str | os.PathLike] | None = None,
                       directory: str | os.PathLike | None = None,
                       file_pattern: str | None = None, max_mb: float = 32.0,
                       validation_fraction: float = 0.05,
                       ) -> dict[str, list[tuple[Path, int]]]:
  """Files of each split as ``{split: [(path, num_bytes_to_read), ...]}``.

  ``num_bytes_to_read`` is the file size, except for the last file kept under
  the ``max_mb`` cap, which may be cut.
  """
  max_mb = check_float("max_mb", max_mb, minimum=0.0)
  if max_mb <= 0:
    raise ValueError(f"max_mb must be > 0, got {max_mb}.")
  validation_fraction = check_float("validation_fraction", validation_fraction,
                                    minimum=0.0, maximum=1.0)
  root, paths = list_corpus_files(files=files, directory=directory,
                                  file_pattern=file_pattern)
  skip_binary = bool(directory) and not files
  budget = int(max_mb * 2**20)
  out: dict[str, list[tuple[Path, int]]] = {s: [] for s in SPLITS}
  for p in paths:
    if budget <= 0:
      break
    if skip_binary and _is_binary(p):
      continue
    n = min(p.stat().st_size, budget)
    budget -= n
    out[file_split(p.relative_to(root).as_posix(), validation_fraction)].append((p, n))
  if not any(out.values()):
    raise ValueError(
        f"directory: only binary files (NUL bytes) in {str(directory)!r}, no text.")
  return out


def load_byte_corpus(split: str, *, files: Sequence[str | os.PathLike] | None = None,
                     directory: str | os.PathLike | None = None,
                     file_pattern: str | None = None, max_mb: float = 32.0,
                     validation_fraction: float = 0.05, separator: int = 0,
                     ) -> np.ndarray:
  """Reads one split as a uint8 array [num_bytes]: each file then ``separator``."""
  check_choice("split", split, SPLITS)
  separator = check_int("separator", separator, minimum=0, maximum=255)
  split_files = corpus_split_files(files=files, directory=directory,
                                   file_pattern=file_pattern, max_mb=max_mb,
                                   validation_fraction=validation_fraction)[split]
  if not split_files:
    raise ValueError(
        f"the {split!r} split of the byte corpus has no files (files={files!r}, "
        f"directory={directory!r}, validation_fraction={validation_fraction}); "
        "add files or change validation_fraction.")
  if sum(n for _, n in split_files) == 0:
    raise ValueError(
        f"the {split!r} split of the byte corpus has no text: its "
        f"{len(split_files)} file(s) are empty (first: {str(split_files[0][0])!r}).")
  total = sum(n + 1 for _, n in split_files)
  data = np.empty(total, dtype=np.uint8)
  pos = 0
  for p, n in split_files:
    with open(p, "rb") as f:
      chunk = f.read(n)
    data[pos:pos + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
    pos += len(chunk)
    data[pos] = separator
    pos += 1
  return data[:pos]


class ByteWindowSource:
  """Random-access LM windows over a uint8 array.

  ``source[i]`` = ``{"inputs": int32 [seq_len], "targets": int32 [seq_len],
  "weights": float32 [seq_len] (ones)}`` from the window ``w = data[i * seq_len : (i + 1) *
  seq_len + 1]`` (``inputs = w[:-1]``, ``targets = w[1:]``), or with ``bos >= 0``
  ``w = [bos] + data[i * seq_len : (i + 1) * seq_len]``. ``repeat_prob``, ``repeat_len``
  and ``repeat_seed``: the repeat edit of the module docstring, drawn from ``(repeat_seed,
  split, i)``, so a window gets the same edit in every epoch (pass the ``split`` the data
  comes from, so that validation edits differ from the train ones).
  """

  def __init__(self, data: np.ndarray, seq_len: int, *, bos: int = -1,
               repeat_prob: float = 0.0, repeat_len: Sequence[int] = (16, 64),
               repeat_seed: int = 0, split: str = "train"):
    self.seq_len = check_int("seq_len", seq_len, minimum=1)
    self.bos = check_int("bos", bos, minimum=-1, maximum=BYTE_VOCAB_SIZE - 1)
    self.repeat_prob = check_float("repeat_prob", repeat_prob, minimum=0.0, maximum=1.0)
    if (not isinstance(repeat_len, Sequence) or isinstance(repeat_len, str)
        or len(repeat_len) != 2):
      raise TypeError(f"repeat_len must be a pair (lo, hi), got {repeat_len!r}.")
    lo = check_int("repeat_len[0]", repeat_len[0], minimum=1)
    hi = check_int("repeat_len[1]", repeat_len[1], minimum=lo)
    room = self.seq_len + 1 - (1 if self.bos >= 0 else 0)
    if self.repeat_prob > 0 and 2 * hi > room:
      raise ValueError(
          f"repeat_len[1] must be at most {room // 2} (two copies in a window of "
          f"{room} text bytes for seq_len={self.seq_len}), got repeat_len={tuple(repeat_len)}.")
    self.repeat_len = (lo, hi)
    self.repeat_seed = check_int("repeat_seed", repeat_seed, minimum=0)
    self._split_id = SPLITS.index(check_choice("split", split, SPLITS))
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 1:
      raise TypeError(
          f"data must be a 1-D uint8 array, got dtype={data.dtype} shape={data.shape}.")
    if len(data) < self.seq_len + 1:
      raise ValueError(
          f"data has {len(data)} bytes, fewer than seq_len + 1 = {self.seq_len + 1}; "
          "use more text or a smaller seq_len.")
    self.data = data
    self.num_windows = (len(data) - 1) // self.seq_len

  def __len__(self) -> int:
    return self.num_windows

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = operator.index(index)
    if index < 0:
      index += self.num_windows
    if not 0 <= index < self.num_windows:
      raise IndexError(f"index must be in [0, {self.num_windows}), got {index}.")
    start = index * self.seq_len
    if self.bos >= 0:
      window = np.concatenate([[self.bos], self.data[start:start + self.seq_len]])
      window = window.astype(np.int32)
    else:
      window = self.data[start:start + self.seq_len + 1].astype(np.int32)
    if self.repeat_prob > 0:
      rng = np.random.default_rng((self.repeat_seed, self._split_id, index))
      if rng.random() < self.repeat_prob:
        length = int(rng.integers(self.repeat_len[0], self.repeat_len[1] + 1))
        first = 1 if self.bos >= 0 else 0
        pos = int(rng.integers(first, len(window) - 2 * length + 1))
        copy = rng.integers(32, 127, size=length)
        window[pos:pos + length] = copy
        window[pos + length:pos + 2 * length] = copy
    return {
        "inputs": window[:-1],
        "targets": window[1:],
        "weights": np.ones(self.seq_len, dtype=np.float32),
    }

  def __repr__(self) -> str:
    return (f"ByteWindowSource(num_bytes={len(self.data)}, seq_len={self.seq_len}, "
            f"num_windows={self.num_windows}, bos={self.bos}, repeat_prob={self.repeat_prob}, "
            f"repeat_len={self.repeat_len})")


def byte_lm_dataset(split: str, *, seq_len: int,
                    files: Sequence[str | os.PathLike] | None = None,
                    directory: str | os.PathLike | None = None,
                    file_pattern: str | None = None, max_mb: float = 32.0,
                    validation_fraction: float = 0.05,
                    separator: int = 0, bos: int = -1, repeat_prob: float = 0.0,
                    repeat_len: Sequence[int] = (16, 64),
                    repeat_seed: int = 0) -> grain.MapDataset:
  """``grain.MapDataset`` of byte LM windows of one split; see the module docstring."""
  data = load_byte_corpus(split, files=files, directory=directory,
                          file_pattern=file_pattern, max_mb=max_mb,
                          validation_fraction=validation_fraction,
                          separator=separator)
  return grain.MapDataset.source(ByteWindowSource(
      data, seq_len, bos=bos, repeat_prob=repeat_prob, repeat_len=repeat_len,
      repeat_seed=repeat_seed, split=split))
