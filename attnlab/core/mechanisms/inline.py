"""InLine attention: injective linear attention plus a local attention residual.

Paper: "Bridging the Divide: Reconsidering Softmax and Linear Attention" (Han, Wang, Wang,
Song & Huang; NeurIPS 2024, arXiv 2412.06590), Eq. 6-7::

    InL(Q_i, K_j) = phi(Q_i)^T phi(K_j) - (1/N) sum_s phi(Q_i)^T phi(K_s) + 1/N
    O_i = sum_j InL(Q_i, K_j) V_j + sum_{m < W} r_im V_{N(i)_m}

The weights of a row sum to one by subtraction instead of division (so the map q -> weights is
injective). With ``S_i = sum phi(K_j) V_j^T``, ``z_i = sum phi(K_j)``, ``m_i = (1/N_i) sum
V_j``: ``O_i = phi(Q_i)^T S_i - (phi(Q_i)^T z_i) m_i + m_i``, all three through
``attnlab.core.linear`` (so causal, chunked and O(1) decoding come for free). Departures:
causal rows use ``N_i = i + 1`` (the keys they see); phi = identity scaled by ``d^-1/2``
(the paper tries several kernels); the local residual's neighbourhood is the last ``W``
positions (causal) or a centred window, and its weights ``r`` come from a per-token linear
map of the input (the module), not from the paper's pooled-input MLP.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from attnlab.core import registry
from attnlab.core.linear import linear_attention
from attnlab.core.linear.conv import depthwise_conv

Array = jax.Array


def inline_attention(q: Array, k: Array, v: Array, *, local_weights: Array | None = None,
                     causal: bool = True, form: str = "chunked", chunk_size: int = 64,
                     initial_state: tuple[Array, Array, Array] | None = None,
                     return_state: bool = False) -> Any:
  """q, k ``[B, T, H, D]``, v ``[B, T, H, Dv]``, ``local_weights [B, T, H, W]`` (None: no
  local residual) -> ``[B, T, H, Dv]``. State ``(s [B, H, D, Dv + 1], sums [B, H, 1, Dv + 1],
  v_tail [B, W - 1, H, Dv])``."""
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  q, k, v = f32(q) * (q.shape[-1] ** -0.5), f32(k), f32(v)
  s0, c0, tail = (None, None, None) if initial_state is None else initial_state
  v1 = jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), jnp.float32)], axis=-1)
  ones = jnp.ones(q.shape[:-1] + (1,), jnp.float32)
  kw = dict(causal=causal, form=form, chunk_size=chunk_size, return_state=return_state)
  a = linear_attention(q, k, v1, initial_state=s0, **kw)         # [phi(q)^T S, phi(q).z]
  c = linear_attention(ones, ones, v1, initial_state=c0, **kw)   # [sum v, N]
  if return_state:
    (a, s), (c, cs) = a, c
  mean = c[..., :-1] / c[..., -1:]
  out = a[..., :-1] - a[..., -1:] * mean + mean
  new_tail = None
  if local_weights is not None:
    local, new_tail = depthwise_conv(v, jnp.moveaxis(f32(local_weights), 3, 2)[..., None],
                                     causal=causal,
                                     history=tail)
    out = out + local
  return (out, (s, cs, new_tail)) if return_state else out


registry.register_mechanism(
    "inline", kind="module",
    paper="Bridging the Divide: Reconsidering Softmax and Linear Attention (InLine, "
          "arXiv 2412.06590)",
    description="weights phi(q).phi(k) - mean_s phi(q).phi(k_s) + 1/N, plus a local residual",
    complexity="O(T d^2 + T W d) time, O(d^2 + W d) decode state")
