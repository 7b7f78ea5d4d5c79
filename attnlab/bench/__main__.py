"""``python -m attnlab.bench <suite> [options]``.

Suites: core, attention, mechanisms, sparse, linear.
"""

from __future__ import annotations

import importlib
import sys

SUITES = {
    "core": "attnlab.bench.core",          # dense vs chunked softmax (foundation figures)
    "attention": "attnlab.bench.attention",  # Pallas kernels vs cuDNN / XLA / others
    "mechanisms": "attnlab.bench.mechanisms",  # every registered mechanism
    "sparse": "attnlab.bench.sparse",  # routed block-sparse (MoBA) vs chunked dense causal
    "linear": "attnlab.bench.linear",  # chunked linear vs chunked softmax, decode state bytes
}


def main(argv: list[str]) -> int:
  if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUITES:
    bad = f"unknown suite {argv[0]!r}; " if argv and argv[0] not in ("-h", "--help") else ""
    print(f"{bad}usage: python -m attnlab.bench {{{','.join(SUITES)}}} [options]",
          file=sys.stderr)
    return 0 if argv and argv[0] in ("-h", "--help") else 2
  importlib.import_module(SUITES[argv[0]]).main(argv[1:])
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
