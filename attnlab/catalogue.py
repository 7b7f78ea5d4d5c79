"""``python -m attnlab.catalogue [--markdown]``: every registered mechanism, grouped by kind.

Columns: name, kind, paper, the config overrides that select it in a training config (read from
``configs/mechanisms.py`` of the source tree: the library itself knows no trainer keys),
time/memory complexity, and the fused kernel available. ``--markdown`` prints the README table.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

from attnlab.core import registry

# Display order of the kinds (``registry.KINDS``) and their headings.
GROUPS = {
    "attention": "Attention functions",
    "module": "Attention modules",
    "mixer": "Token mixers",
    "pooling": "Pooling heads (encoder)",
    "block": "Block and depth variants",
}
CONFIGS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "configs", "mechanisms.py")


def _overrides() -> Any:
  """``overrides_for(name)`` of ``configs/mechanisms.py``, or None outside a source tree."""
  if not os.path.exists(CONFIGS_FILE):
    return None
  spec = importlib.util.spec_from_file_location("attnlab_configs_mechanisms", CONFIGS_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.overrides_for


def rows() -> list[dict[str, str]]:
  """One dict per registered mechanism, grouped by kind (``GROUPS`` order), then by name."""
  import attnlab.models  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  overrides_for = _overrides()
  order = list(GROUPS)
  names = sorted(registry.list_mechanisms(),
                 key=lambda n: (order.index(registry.get_mechanism(n).kind), n))
  out = []
  for name in names:
    m = registry.get_mechanism(name)
    cfg = overrides_for(name) if overrides_for is not None else {}
    keys = ", ".join(f"{k}={v!r}" for k, v in cfg.items()) or "-"
    out.append({"name": name, "kind": m.kind, "paper": m.paper or "-", "config": keys,
                "complexity": m.complexity or "-", "kernel": m.kernel or "-",
                "implementations": ", ".join(sorted(m.implementations)) or "-"})
  return out


def markdown() -> str:
  lines = ["| mechanism | kind | paper | config | time / memory | fused kernel |",
           "|---|---|---|---|---|---|"]
  for r in rows():
    cfg = r["config"].replace("|", "\\|")
    lines.append(f"| `{r['name']}` | {r['kind']} | {r['paper']} | `{cfg}` | "
                 f"{r['complexity']} | {r['kernel']} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m attnlab.catalogue", description=__doc__)
  p.add_argument("--markdown", action="store_true", help="print the README table")
  a = p.parse_args(argv)
  if a.markdown:
    print(markdown())
    return 0
  kind = None
  for r in rows():
    if r["kind"] != kind:
      kind = r["kind"]
      print(f"\n== {GROUPS[kind]} ==")
    print(f"{r['name']:<24} {r['paper']}")
    print(f"{'':<24} config: {r['config']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
