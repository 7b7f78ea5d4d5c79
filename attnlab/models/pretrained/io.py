"""Reading and writing Hugging Face safetensors folders, one tensor at a time.

``TensorSource`` opens ``model.safetensors`` or the shards listed by
``model.safetensors.index.json`` with ``safetensors.safe_open(..., framework="numpy")`` (no
torch) and returns one tensor per ``get``. ``write_tensors`` writes shards of at most
``max_shard_size`` bytes plus the index when there is more than one.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Iterator

import numpy as np

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


class TensorSource:
  """The tensors of an HF folder, read lazily by name (files stay open until ``close``)."""

  def __init__(self, path: str):
    self.path = path
    index = os.path.join(path, INDEX)
    if os.path.exists(index):
      with open(index) as f:
        self.where = dict(json.load(f)["weight_map"])
    else:
      files = ([SINGLE] if os.path.exists(os.path.join(path, SINGLE)) else
               sorted(n for n in os.listdir(path) if n.endswith(".safetensors")))
      if not files:
        raise FileNotFoundError(f"no {SINGLE}, {INDEX} or *.safetensors file in {path!r}")
      self.where = {}
      for name in files:
        with self._open(name) as f:
          for key in f.keys():
            self.where[key] = name
    self._files: dict[str, Any] = {}

  def _open(self, name: str) -> Any:
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    return safe_open(os.path.join(self.path, name), framework="numpy")

  def keys(self) -> list[str]:
    return sorted(self.where)

  def __contains__(self, name: str) -> bool:
    return name in self.where

  def get(self, name: str) -> np.ndarray:
    """One tensor as a numpy array; ``KeyError`` naming it and the folder when absent."""
    if name not in self.where:
      raise KeyError(f"tensor {name!r} is missing from the checkpoint in {self.path!r}")
    file = self.where[name]
    if file not in self._files:
      self._files[file] = self._open(file).__enter__()
    return self._files[file].get_tensor(name)

  def close(self) -> None:
    for f in self._files.values():
      f.__exit__(None, None, None)
    self._files = {}

  def __enter__(self) -> "TensorSource":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def _shards(tensors: Iterable[tuple[str, np.ndarray]],
            max_shard_size: int) -> Iterator[dict[str, np.ndarray]]:
  shard: dict[str, np.ndarray] = {}
  size = 0
  for name, arr in tensors:
    if shard and size + arr.nbytes > max_shard_size:
      yield shard
      shard, size = {}, 0
    shard[name] = arr
    size += arr.nbytes
  if shard:
    yield shard


def write_tensors(path: str, tensors: Iterable[tuple[str, np.ndarray]], *,
                  max_shard_size: int) -> list[str]:
  """Write ``(name, array)`` pairs as safetensors shards; returns the file names written."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  written: list[tuple[str, list[str], int]] = []
  tmp_names = []
  for i, shard in enumerate(_shards(tensors, max_shard_size)):
    tmp = f"model-{i + 1:05d}.safetensors.tmp"
    save_file({k: np.ascontiguousarray(v) for k, v in shard.items()},
              os.path.join(path, tmp), metadata={"format": "pt"})
    tmp_names.append(tmp)
    written.append((tmp, list(shard), sum(v.nbytes for v in shard.values())))
  n = len(written)
  if n == 1:
    os.replace(os.path.join(path, tmp_names[0]), os.path.join(path, SINGLE))
    return [SINGLE]
  weight_map, total, names = {}, 0, []
  for i, (tmp, keys, nbytes) in enumerate(written):
    name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
    os.replace(os.path.join(path, tmp), os.path.join(path, name))
    names.append(name)
    total += nbytes
    weight_map.update({k: name for k in keys})
  with open(os.path.join(path, INDEX), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
              f, indent=2)
  return names
