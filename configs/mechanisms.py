r"""MQAR with any catalogued mechanism: ``configs/mechanisms.py:<name>[,local]``.

  python -m attnlab.train --config configs/mechanisms.py:deberta --workdir /tmp/mqar_deberta
  python -m attnlab.train --config configs/mechanisms.py:sigmoid,local --workdir /tmp/smoke

The base is ``configs/mqar.py`` (``local`` = its tiny variant); the mechanism's catalogue
entry (``attnlab.get_mechanism(name).config``) supplies the dotted overrides that select it and
set its hyperparameters. ``python -m attnlab.catalogue`` lists the names.
"""

import importlib.util
import os

import attnlab


def _load_sibling(name: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"attnlab_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def apply_overrides(config, overrides: dict) -> None:
  """Set dotted keys (``"model.attention.kwargs.beta": 0.9``), creating kwargs entries."""
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
      if p not in node:
        raise ValueError(f"config override {dotted!r}: no key {p!r} under {node.keys()}")
      node = node[p]
    if leaf not in node and not dotted.startswith("model.attention.kwargs."):
      raise ValueError(f"config override {dotted!r}: unknown key {leaf!r}")
    with node.unlocked() if hasattr(node, "unlocked") else _nullcontext():
      node[leaf] = value


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def get_config(arg: str = "softmax"):
  parts = [p.strip() for p in (arg or "softmax").split(",") if p.strip()]
  name, flags = parts[0], set(parts[1:])
  unknown = flags - {"local", "runlocal"}
  if unknown:
    raise ValueError(f"configs/mechanisms.py: unknown flags {sorted(unknown)}; use ',local'")
  entry = attnlab.get_mechanism(name)  # ValueError listing valid names
  config = _load_sibling("mqar").get_config("local" if flags else "")
  apply_overrides(config, entry.config or {"model.attention.mechanism": name})
  return config
