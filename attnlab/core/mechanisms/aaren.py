"""Aaren: attention as an RNN, computed with a parallel prefix scan.

Paper: "Attention as an RNN" (Feng, Tung, Hajimirsadeghi, Ahmed, Bengio & Mori,
arXiv 2405.13956), Sec. 3.1-3.2: the output of a *learned* query ``q`` attending to a prefix,
``o_k = sum_{i<=k} exp(s_i) v_i / sum_{i<=k} exp(s_i)``, ``s_i = q . k_i``, is a prefix
reduction of the triple ``(m, u, w)`` (running max, denominator, numerator) under the
associative operator::

    (m_A, u_A, w_A) + (m_B, u_B, w_B) = (m, u_A e^(m_A - m) + u_B e^(m_B - m),
                                             w_A e^(m_A - m) + w_B e^(m_B - m)),  m = max

computed with ``jax.lax.associative_scan``; decoding carries one triple per head (O(1)).
Departures: ``s_i`` is scaled by ``d^-1/2``; bidirectional calls give every position the
reduction over the whole sequence (Aaren is causal by construction); the state is packed as
``[B, H, Dv + 2]`` = (w, m, u), an all-zero state being the empty prefix.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from attnlab.core import registry

Array = jax.Array

_EMPTY = -1e30  # m of the empty prefix (finite: e^(m_A - m) stays 0 without NaN)


def _combine(a, b):
  (ma, ua, wa), (mb, ub, wb) = a, b
  m = jnp.maximum(ma, mb)
  ea, eb = jnp.exp(ma - m), jnp.exp(mb - m)
  return m, ua * ea + ub * eb, wa * ea[..., None] + wb * eb[..., None]


def aaren_scan(scores: Array, v: Array, *, causal: bool = True,
               initial_state: Array | None = None, return_state: bool = False) -> Any:
  """``scores [B, T, H]`` (``s_i``), ``v [B, T, H, Dv]`` -> ``[B, T, H, Dv]`` (state
  ``[B, H, Dv + 2]``)."""
  s = jnp.asarray(scores, jnp.float32)
  v = jnp.asarray(v, jnp.float32)
  b, t, h, dv = v.shape
  if s.shape != (b, t, h):
    raise ValueError(f"scores must have shape [B, T, H]={(b, t, h)}, got {s.shape}")
  m, u, w = jax.lax.associative_scan(_combine, (s, jnp.ones_like(s), v), axis=1)
  if initial_state is not None:
    st = jnp.asarray(initial_state, jnp.float32)
    if st.shape != (b, h, dv + 2):
      raise ValueError(f"initial_state must have shape {(b, h, dv + 2)}, got {st.shape}")
    w0, m0, u0 = st[..., :dv], st[..., dv], st[..., dv + 1]
    m0 = jnp.where(u0 > 0, m0, _EMPTY)
    m, u, w = _combine((m0[:, None], u0[:, None], w0[:, None]), (m, u, w))
  if not causal:
    m, u, w = m[:, -1:], u[:, -1:], w[:, -1:]
    m, u, w = (jnp.broadcast_to(x, (b, t) + x.shape[2:]) for x in (m, u, w))
  out = w / u[..., None]
  if not return_state:
    return out
  return out, jnp.concatenate([w[:, -1], m[:, -1, :, None], u[:, -1, :, None]], axis=-1)


def aaren_attention(query: Array, k: Array, v: Array, **kwargs: Any) -> Any:
  """Learned ``query [H, D]`` attending causally over ``k [B, T, H, D]``, ``v``; kwargs as
  ``aaren_scan``."""
  k = jnp.asarray(k, jnp.float32)
  s = jnp.einsum("bthd,hd->bth", k, jnp.asarray(query, jnp.float32)) * (k.shape[-1] ** -0.5)
  return aaren_scan(s, v, **kwargs)


registry.register_mechanism(
    "aaren", kind="module",
    paper="Attention as an RNN (Aaren, arXiv 2405.13956)",
    description="learned query, softmax over the prefix as an associative (m, u, w) scan",
    complexity="O(T d) work, O(log T) depth; O(d) decode state")
