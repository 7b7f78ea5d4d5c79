"""Retention (RetNet): linear attention with a fixed exponential decay per head.

Paper: "Retentive Network: A Successor to Transformer for Large Language Models" (Sun et al.,
arXiv 2307.08621), Eq. 1-8 and the multi-scale retention of Sec. 2.2::

    S_n = gamma_h S_{n-1} + k_n^T v_n,   o_n = q_n S_n,   gamma_h = 1 - 2^(-5 - h)

with ``k`` scaled by ``d^-1/2`` (as the authors' code) and no normaliser. The module adds the
paper's per-head GroupNorm and swish output gate. Departures: no xPos rotation (positions come
from the decay alone); the heads' decays follow ``1 - 2^(-5 - h * 5 / (H - 1))`` spread over
[1 - 2^-5, 1 - 2^-10] for any head count (the paper: ``h = 0..H-1`` for its head counts); the
GroupNorm is an RMS norm per head (no mean subtraction).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.core import registry
from attnlab.core.linear import linear_attention

Array = jax.Array


def retnet_log_decays(num_heads: int) -> np.ndarray:
  """``log gamma_h`` for ``h = 0..H-1`` (float32 ``[H]``)."""
  expo = -5.0 - (np.arange(num_heads) * 5.0 / max(num_heads - 1, 1))
  return np.log1p(-np.exp2(expo)).astype(np.float32)


def retention(q: Array, k: Array, v: Array, *, log_decay: Array, causal: bool = True,
              form: str = "chunked", chunk_size: int = 64, initial_state: Array | None = None,
              return_state: bool = False) -> Any:
  """q, k ``[B, T, H, D]``, v ``[B, T, H, Dv]``, ``log_decay [H]`` (log gamma) ->
  ``[B, T, H, Dv]`` (state ``[B, H, D, Dv]``)."""
  k = jnp.asarray(k, jnp.float32) * (q.shape[-1] ** -0.5)
  return linear_attention(q, k, v, decay=log_decay, causal=causal, form=form,
                          chunk_size=chunk_size, initial_state=initial_state,
                          return_state=return_state)


registry.register_mechanism(
    "retnet", kind="module",
    paper="Retentive Network: A Successor to Transformer for Large Language Models "
          "(arXiv 2307.08621)",
    description="S_t = gamma_h S_{t-1} + k_t v_t^T, o_t = q_t S_t; GroupNorm + swish gate",
    complexity="O(T d^2) time, O(d^2) decode state (chunked: O(T C d + T d^2))")
