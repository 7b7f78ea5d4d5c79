"""Gated linear attention (GLA): a data-dependent decay per key channel.

Paper: "Gated Linear Attention Transformers with Hardware-Efficient Training" (Yang, Wang,
Shen, Panda & Kim, arXiv 2312.06635), Eq. 3-4 and Sec. 4.4::

    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,   o_t = q_t S_t,
    alpha_t = sigmoid(x_t W_a1 W_a2 + b_a)^(1/tau),  tau = 16

with ``q`` scaled by ``d^-1/2`` and no normaliser; the module adds the paper's low-rank gate
(rank 16), per-head RMSNorm and swish output gate. Departures: the chunked form computes the
intra-chunk decay as an explicit ``[C, C, Dk]`` tensor (exact, O(T C Dk) memory) instead of
the paper's secondary chunking in log space; GQA kv heads are repeated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from attnlab.core import registry
from attnlab.core.linear import linear_attention

Array = jax.Array


def gla_log_decay(gate_logits: Array, tau: float = 16.0) -> Array:
  """``log alpha = log sigmoid(logits) / tau`` (``<= 0``), same shape."""
  return jax.nn.log_sigmoid(jnp.asarray(gate_logits, jnp.float32)) / tau


def gated_linear_attention(q: Array, k: Array, v: Array, *, log_decay: Array,
                           causal: bool = True, form: str = "chunked", chunk_size: int = 64,
                           initial_state: Array | None = None, return_state: bool = False
                           ) -> Any:
  """q, k ``[B, T, H, D]``, v ``[B, T, H, Dv]``, ``log_decay [B, T, H, D]`` ->
  ``[B, T, H, Dv]`` (state ``[B, H, D, Dv]``)."""
  q = jnp.asarray(q, jnp.float32) * (q.shape[-1] ** -0.5)
  return linear_attention(q, k, v, decay=log_decay, causal=causal, form=form,
                          chunk_size=chunk_size, initial_state=initial_state,
                          return_state=return_state)


registry.register_mechanism(
    "gla", kind="module",
    paper="Gated Linear Attention Transformers with Hardware-Efficient Training "
          "(arXiv 2312.06635)",
    description="S_t = diag(alpha_t) S_{t-1} + k_t v_t^T, alpha_t = sigmoid(low-rank(x))^(1/16)",
    complexity="O(T C d + T d^2) time (chunked), O(d^2) decode state")
