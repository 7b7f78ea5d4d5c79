"""Gated DeltaNet: the delta rule with a data-dependent scalar decay per head.

Paper: "Gated Delta Networks: Improving Mamba2 with Delta Rule" (Yang, Kautz & Hatamizadeh,
arXiv 2412.06464), Eq. 10::

    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t,
    log alpha_t = -exp(A_h) softplus(x_t W_a + dt_bias_h),  beta_t = sigmoid(x_t W_beta)

(Mamba-2's decay parametrisation, as the authors' code), q, k = L2Norm(SiLU(.)), q scaled by
``d^-1/2``; chunked in the WY form with the decay folded in (``attnlab.core.linear``). The
module adds a per-head RMSNorm and a swish output gate. Departures: no short convolutions;
GQA kv heads repeated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from attnlab.core import registry
from attnlab.core.mechanisms.deltanet import delta_attention

Array = jax.Array


def gated_delta_log_decay(a_logits: Array, a_log: Array, dt_bias: Array) -> Array:
  """``-exp(A) softplus(a_logits + dt_bias)``: ``a_logits [B, T, H]``, ``A, dt_bias [H]``."""
  a = jnp.asarray(a_logits, jnp.float32) + jnp.asarray(dt_bias, jnp.float32)
  return -jnp.exp(jnp.asarray(a_log, jnp.float32)) * jax.nn.softplus(a)


def gated_delta_attention(q: Array, k: Array, v: Array, *, beta: Array, log_decay: Array,
                          form: str = "chunked", chunk_size: int = 64,
                          initial_state: Array | None = None, return_state: bool = False
                          ) -> Any:
  """As ``deltanet.delta_attention`` with the decay ``log_decay [B, T, H]`` required."""
  return delta_attention(q, k, v, beta=beta, log_decay=log_decay, form=form,
                         chunk_size=chunk_size, initial_state=initial_state,
                         return_state=return_state)


registry.register_mechanism(
    "gated_deltanet", kind="module",
    paper="Gated Delta Networks: Improving Mamba2 with Delta Rule (arXiv 2412.06464)",
    description="S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T",
    complexity="O(T C d + T d^2) time (chunked WY), O(d^2) decode state")
