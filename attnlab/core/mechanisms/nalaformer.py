"""NaLaFormer: norm-aware linear attention.

Paper: "NaLaFormer: Norm-Aware Linear Attention for Transformer Models" (Meng et al.,
arXiv 2506.21137). Queries and keys are split into norm and direction; the query norm sets
the spikiness of the kernel (softmax's implicit temperature, which the normaliser of linear
attention cancels) and a non-negative map of the directions keeps only same-sign
interactions (the paper's cosine inhibition)::

    u = x / ||x||,  psi_p(u) = [relu(u)^p, relu(-u)^p]          (2D features, >= 0)
    phi_q(q) = psi_{p(q)}(u_q),  p(q) = 1 + lambda tanh(||q||)     (query-norm-aware power)
    phi_k(k) = psi_{p_k}(u_k)
    o_i = phi_q(q_i)^T sum phi_k(k_j) v_j^T / phi_q(q_i)^T sum phi_k(k_j)

Departures: this is our reading of the paper's idea, not its exact kernel: the power law
``p(q) = 1 + lambda tanh(||q||)`` (``lambda``: ``norm_power``, default 2), the fixed key power
``p_k`` (default 2) and the polarity split used for non-negativity are our choices; the
paper's depthwise-convolution branch is omitted. Computed by ``attnlab.core.linear``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from attnlab.core import registry
from attnlab.core.linear import feature_maps, linear_attention

Array = jax.Array


def norm_aware_features(x: Array, power: Array | float) -> Array:
  """``[relu(u)^p, relu(-u)^p]`` of the direction ``u = x / ||x||``: ``[..., D] -> [..., 2D]``.
  ``power`` broadcastable to ``[..., 1]``."""
  u = feature_maps.l2(x)
  p = jnp.asarray(power, jnp.float32)
  pos, neg = jax.nn.relu(u), jax.nn.relu(-u)
  # x^p as exp(p log x) with x = 0 -> 0 (and a zero, finite gradient there).
  powr = lambda a: jnp.where(a > 0, jnp.exp(p * jnp.log(jnp.where(a > 0, a, 1.0))), 0.0)  # noqa
  return jnp.concatenate([powr(pos), powr(neg)], axis=-1)


def query_power(q: Array, norm_power: float) -> Array:
  """``p(q) = 1 + lambda tanh(||q||)``, ``[..., 1]``."""
  q = jnp.asarray(q, jnp.float32)
  return 1.0 + norm_power * jnp.tanh(jnp.sqrt(jnp.sum(q * q, -1, keepdims=True)))


def nalaformer_attention(q: Array, k: Array, v: Array, *, norm_power: float = 2.0,
                         key_power: float = 2.0, causal: bool = True, form: str = "chunked",
                         chunk_size: int = 64, eps: float = 1e-6,
                         initial_state: Array | None = None, return_state: bool = False
                         ) -> Any:
  """q, k ``[B, T, H, D]``, v ``[B, T, H, Dv]`` -> ``[B, T, H, Dv]`` (state
  ``[B, H, 2D, Dv + 1]``)."""
  fq = norm_aware_features(q, query_power(q, norm_power))
  fk = norm_aware_features(k, key_power)
  return linear_attention(fq, fk, v, normalize=True, eps=eps, causal=causal, form=form,
                          chunk_size=chunk_size, initial_state=initial_state,
                          return_state=return_state)


registry.register_mechanism(
    "nalaformer", kind="module",
    paper="NaLaFormer: Norm-Aware Linear Attention for Transformer Models (arXiv 2506.21137)",
    description="normalised linear attention, phi = polarity-split direction ^ p(||q||)",
    complexity="O(T d^2) time, O(d^2) decode state")
