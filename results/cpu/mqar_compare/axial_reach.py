"""Which earlier tokens can change a token's logits in the 2-layer causal MQAR models?

Perturbation check at initialisation (seed 0): token s is replaced and every position whose
logits change (> 1e-6) counts as reached from s. Writes axial_reach.json beside this file.

    python results/cpu/mqar_compare/axial_reach.py
"""
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from attnlab.models import build_model
from attnlab.train import compare


def reach(name: str, T: int = 64) -> np.ndarray:
  cfg = compare.load_config(name, "compare")
  model = build_model(cfg.model, vocab_size=cfg.data.vocab_size, rngs=nnx.Rngs(0))
  tokens = jnp.arange(T)[None] % 200 + 1
  base = np.asarray(model(tokens))[0]
  out = np.zeros((T, T), bool)  # out[t, s]: logits at t depend on token s
  for s in range(T):
    changed = np.asarray(model(tokens.at[0, s].set(250)))[0]
    out[:, s] = np.abs(changed - base).max(-1) > 1e-6
  return out


def main() -> None:
  result = {}
  for name in ("softmax", "axial"):
    r = reach(name)
    causal = np.tril(np.ones_like(r))
    # the rectangle above-left of (row, col) on the 8x8 row-major grid
    rows, cols = np.divmod(np.arange(r.shape[0]), 8)
    rect = (rows[None, :] <= rows[:, None]) & (cols[None, :] <= cols[:, None])
    result[name] = {
        "reached_fraction_of_causal_pairs": float(r[causal.astype(bool)].mean()),
        "acausal_pairs_reached": int((r & ~causal.astype(bool)).sum()),
        "equals_above_left_rectangle": bool((r == rect).all()),
        "reached_from_token_9": np.nonzero(r[9])[0].tolist(),
    }
  path = Path(__file__).with_suffix(".json")
  path.write_text(json.dumps(result, indent=1) + "\n")
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
