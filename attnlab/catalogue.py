"""``python -m attnlab.catalogue [--markdown]``: every registered mechanism in one table.

Columns: name, kind, paper, config overrides that select it, time/memory complexity, and the
fused kernel available. ``--markdown`` prints the README table.
"""

from __future__ import annotations

import argparse
import sys

from attnlab.core import registry


def rows() -> list[dict[str, str]]:
  out = []
  for name in registry.list_mechanisms():
    m = registry.get_mechanism(name)
    keys = ", ".join(f"{k}={v!r}" for k, v in m.config.items()) or "-"
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
  for r in rows():
    print(f"{r['name']:<24} {r['kind']:<10} {r['paper']}")
    print(f"{'':<24} config: {r['config']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
