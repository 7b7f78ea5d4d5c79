r"""Wide versus deep on MQAR at a fixed total number of heads ("Wide Attention Is The Way
Forward For Transformers?", arXiv 2210.00640).

  python -m attnlab.train --config configs/wide_vs_deep.py:depth=1 --workdir /tmp/wd_1
  python -m attnlab.train --config configs/wide_vs_deep.py:depth=4,heads=8 --workdir /tmp/wd_4
  python -m attnlab.train --config configs/wide_vs_deep.py:depth=2,local --workdir /tmp/wd_smoke

Arguments after the colon (comma separated):

  depth=L     number of layers (must divide heads); default 1 (widest)
  heads=N     total number of attention heads, L * heads_per_layer = N; default 4
  head_dim=D  per-head width kept fixed across depths; default 16
  local       the tiny MQAR smoke-test base (configs/mqar.py:local)

Everything else (d_model, MLP width, optimiser, data) is the MQAR config's; the sweep helper is
``attnlab.models.wide_deep_configs``.
"""

import importlib.util
import os


def _load_sibling(name: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"attnlab_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def parse_arg(arg: str) -> dict:
  out = dict(depth=1, heads=4, head_dim=16, local=False)
  for part in (p.strip() for p in (arg or "").split(",")):
    if not part:
      continue
    if part in ("local", "runlocal"):
      out["local"] = True
      continue
    key, sep, val = part.partition("=")
    if not sep or key not in ("depth", "heads", "head_dim"):
      raise ValueError(f"configs/wide_vs_deep.py: bad argument {part!r}; use depth=L, "
                       f"heads=N, head_dim=D, local")
    try:
      out[key] = int(val)
    except ValueError:
      raise ValueError(f"configs/wide_vs_deep.py: {key} must be an int, got {val!r}") from None
  return out


def get_config(arg: str = ""):
  from attnlab.models import wide_deep_configs  # pylint: disable=g-import-not-at-top
  a = parse_arg(arg)
  base = _load_sibling("mqar").get_config("local" if a["local"] else "")
  (config,) = wide_deep_configs(base, a["heads"], (a["depth"],), head_dim=a["head_dim"])
  return config
