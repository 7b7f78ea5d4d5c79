"""Helpers shared by the methods: per-example losses, per-head edits for every layer."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.analysis.hooks import Edit

Array = jax.Array


def shape(model: Any) -> tuple[int, int]:
  """``(num_layers, num_heads)``."""
  return model.num_layers, model.stack.num_heads


def token_losses(logits: Array, tokens: Array) -> Array:
  """Next-token cross-entropy ``[B, T-1]`` float32 (position t predicts token t+1)."""
  lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(lp, jnp.asarray(tokens)[:, 1:, None], axis=-1)[..., 0]


def head_scale_edits(scales: Any) -> list[Edit]:
  """``scales [L, H]`` (or ``[L, B, H]``) -> one z-scaling edit per layer (traced)."""
  scales = jnp.asarray(scales, jnp.float32)
  out = []
  for i in range(scales.shape[0]):
    s = scales[i]
    s = s[None] if s.ndim == 1 else s
    out.append(Edit(f"z.{i}", scale=s[:, None, :, None]))
  return out


def check_heads(heads: Any, model: Any) -> list[tuple[int, int]]:
  n, h = shape(model)
  out = []
  for pair in heads:
    layer, head = (int(x) for x in pair)
    if not (0 <= layer < n and 0 <= head < h):
      raise ValueError(f"head (layer, head) must be in [0, {n}) x [0, {h}), got {pair}")
    out.append((layer, head))
  return out


def top_heads(scores: Any, k: int) -> list[tuple[int, int]]:
  """The ``k`` highest entries of an ``[L, H]`` score map, best first."""
  s = np.asarray(scores, np.float64)
  order = np.argsort(-s, axis=None, kind="stable")[:k]
  return [tuple(int(x) for x in np.unravel_index(i, s.shape)) for i in order]
