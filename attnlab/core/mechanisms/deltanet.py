"""DeltaNet: linear attention with the delta-rule state update.

Paper: "Parallelizing Linear Transformers with the Delta Rule over Sequence Length" (Yang,
Wang, Zhang, Shen & Kim, arXiv 2406.06484), Eq. 1-2 and Sec. 3 (chunkwise WY form)::

    S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,   o_t = S_t q_t,
    q, k = L2Norm(SiLU(x W)),  beta_t = sigmoid(x_t W_beta)

(written with ``S [Dk, Dv]`` here: ``S_t = (I - beta k k^T) S_{t-1} + beta k v^T``), q also
scaled by ``d^-1/2`` (the authors' kernels' default). The chunked form is the WY form
(``attnlab.core.linear``). The module adds a per-head RMSNorm on the output. Departures: no
short convolutions on q/k/v (the paper's Sec. 4 ablation uses them); GQA kv heads repeated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from attnlab.core import registry
from attnlab.core.linear import feature_maps, linear_attention

Array = jax.Array


def delta_qk(q: Array, k: Array) -> tuple[Array, Array]:
  """DeltaNet's feature map: ``L2Norm(SiLU(.))``; q also scaled by ``d^-1/2``."""
  q = feature_maps.l2(jax.nn.silu(jnp.asarray(q, jnp.float32))) * (q.shape[-1] ** -0.5)
  return q, feature_maps.l2(jax.nn.silu(jnp.asarray(k, jnp.float32)))


def delta_attention(q: Array, k: Array, v: Array, *, beta: Array,
                    log_decay: Array | None = None, form: str = "chunked",
                    chunk_size: int = 64, initial_state: Array | None = None,
                    return_state: bool = False) -> Any:
  """q, k ``[B, T, H, D]`` (raw projections), v ``[B, T, H, Dv]``, ``beta [B, T, H]`` in
  (0, 1), optional scalar ``log_decay [B, T, H]`` (gated DeltaNet) -> ``[B, T, H, Dv]``.
  Causal only (the delta rule has no bidirectional form)."""
  q, k = delta_qk(q, k)
  return linear_attention(q, k, v, beta=beta, decay=log_decay, form=form,
                          chunk_size=chunk_size, initial_state=initial_state,
                          return_state=return_state)


registry.register_mechanism(
    "deltanet", kind="module",
    paper="Parallelizing Linear Transformers with the Delta Rule over Sequence Length "
          "(arXiv 2406.06484)",
    description="S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T (chunked WY form)",
    complexity="O(T C d + T d^2) time (chunked WY), O(d^2) decode state")
