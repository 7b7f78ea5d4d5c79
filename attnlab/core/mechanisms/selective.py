"""Selective Self-Attention (SSA): query, position and value temperatures.

Paper: "Selective Attention: Enhancing Transformer through Principled Context Control"
(Zhang, Chang, Li, Roy-Chowdhury, Chen, Oymak; NeurIPS 2024, arXiv 2411.12892).

Equation (per head h, query i, key j)::

    tau_i   = q_temperature[i, h] + position_strength[h] * log(n_i)
    w_ij    = softmax_j( (tau_i q_i) . k_j * scale + bias_ij )
    out_i   = sum_j w_ij * v_temperature[j] * v_j

``n_i`` is the number of keys query ``i`` may see (row count of the mask: ``i + 1`` for causal
attention, as the authors' code ``1 + s log(row_length)``; ``kv_len`` without a mask).
Temperatures are inputs (``[B, Tq, H]``, ``[B, Tk, K]``, ``[H]``); the learned functions that
produce them live in ``attnlab.nn.mechanisms.selective.SelectiveAttention``. With
``q_temperature = 1``, ``position_strength = 0`` and ``v_temperature = 1`` this is softmax
attention. Departures: ``n_i`` counts the keys that the mask allows (segments, windows, cache
validity) rather than the raw position; the module applies the temperature to q after RoPE.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Float

from attnlab.core import common
from attnlab.core.mechanisms import softmax as softmax_lib
from attnlab.core.mechanisms import _scores
from attnlab.core import registry

Array = jax.Array


def visible_keys(mask, b: int, tq: int, tk: int) -> Array:
  """Float32 ``[B|1, Tq]``: how many keys each query may attend to (at least 1)."""
  allowed = softmax_lib.dense_mask(mask, tq, tk)
  if allowed is None:
    return jnp.full((1, tq), float(tk), jnp.float32)
  n = jnp.sum(allowed[:, 0].astype(jnp.float32), axis=-1)
  return jnp.maximum(n, 1.0)


def _temperatures(q, k, v, mask, q_temperature, v_temperature, position_strength,
                  count_keys):
  """``(tau [B|1, Tq, H], v scaled by v_temperature)``; ``count_keys() -> [B|1, Tq]``."""
  b, tq, h, _ = q.shape
  tk, kh = k.shape[1], k.shape[2]
  tau = jnp.ones((1, tq, h), jnp.float32)
  if q_temperature is not None:
    q_temperature = jnp.asarray(q_temperature, jnp.float32)
    if q_temperature.shape not in ((b, tq, h), (1, tq, h)):
      raise ValueError(f"q_temperature must have shape [batch, q_len, heads]={(b, tq, h)}, "
                       f"got {q_temperature.shape}")
    tau = q_temperature
  if position_strength is not None:
    s = _scores.head_param(position_strength, "position_strength", h)
    tau = tau + s[None, None, :] * jnp.log(count_keys())[:, :, None]
  if v_temperature is not None:
    v_temperature = jnp.asarray(v_temperature, jnp.float32)
    if v_temperature.shape not in ((b, tk, kh), (1, tk, kh)):
      raise ValueError(f"v_temperature must have shape [batch, kv_len, kv_heads]="
                       f"{(b, tk, kh)}, got {v_temperature.shape}")
    v = (v.astype(jnp.float32) * v_temperature[..., None]).astype(v.dtype)
  return tau, v


def selective_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                        v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                        scale: float | None = None, softcap: float | None = None,
                        alibi_slopes: Array | None = None, q_offset: Any = 0,
                        head_mask: Array | None = None, return_weights: bool = False,
                        q_temperature: Array | None = None, v_temperature: Array | None = None,
                        position_strength: Array | None = None):
  """SSA; q ``[B,Tq,H,D]``, k/v ``[B,Tk,K,D]`` -> ``[B,Tq,H,Dv]``.

  ``q_temperature``: ``[B, Tq, H]`` (default 1). ``v_temperature``: ``[B, Tk, K]`` (default 1).
  ``position_strength``: ``[H]`` or scalar ``s``; adds ``s * log(n_i)`` to the query
  temperature (default 0).
  """
  mask, bias, scale, alibi, head_mask = _scores.prepare(q, k, v, mask, bias, scale,
                                                        alibi_slopes, head_mask)
  b, tq, _, _ = q.shape
  tau, v = _temperatures(q, k, v, mask, q_temperature, v_temperature, position_strength,
                         lambda: visible_keys(mask, b, tq, k.shape[1]))
  qt = (q.astype(jnp.float32) * tau[..., None]).astype(q.dtype)
  logits = common.dense_logits(qt, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                               q_offset=q_offset)
  return _scores.softmax_output(logits, v, mask, head_mask, q.dtype, return_weights)


def selective_flex(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                   v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                   scale: float | None = None, softcap: float | None = None,
                   alibi_slopes: Array | None = None, q_offset: Any = 0,
                   head_mask: Array | None = None, return_weights: bool = False,
                   q_temperature: Array | None = None, v_temperature: Array | None = None,
                   position_strength: Array | None = None, implementation: str = "chunked",
                   **opts: Any):
  """``selective_attention`` in O(T) memory: the per-query temperature as a score_mod
  ``s * tau[b, i, h]`` ("chunked" or "pallas"; before soft-capping, bias and ALiBi, as the
  reference scales q); ``n_i`` counted one q block at a time."""
  kw = dict(mask=mask, bias=bias, scale=scale, softcap=softcap, alibi_slopes=alibi_slopes,
            q_offset=q_offset, q_temperature=q_temperature, v_temperature=v_temperature,
            position_strength=position_strength)
  mask, bias, scale, alibi, head_mask_ = _scores.prepare(q, k, v, mask, bias, scale,
                                                         alibi_slopes, head_mask)
  tq, tk = q.shape[1], k.shape[1]
  tau, vt = _temperatures(q, k, v, mask, q_temperature, v_temperature, position_strength,
                          lambda: _scores.visible_keys_blocked(mask, tq, tk))
  off = jnp.asarray(q_offset, jnp.int32)

  def raw_mod(s, b, h, qi, ki):
    return s * tau[b if tau.shape[0] > 1 else 0, qi - off, h]

  out = _scores.flex_attention(q, k, vt, raw_mod=raw_mod, additive=False, mask=mask,
                               bias=bias, scale=scale, softcap=softcap, alibi=alibi,
                               q_offset=q_offset, head_mask=head_mask_,
                               implementation=implementation, **opts)
  return _scores.with_weights(out, selective_attention, q, k, v, return_weights, **kw)


registry.register_mechanism(
    'selective_ssa', kind='module',
    paper='Selective Attention: Enhancing Transformer through Principled Context Control '
          '(arXiv 2411.12892)',
    description='softmax((tau_q,i q_i) k_j * scale) (tau_v,j v_j); tau_q = 1 + tanh(q.w) + s '
                'log(n_i), tau_v = 1 + tanh(v.u)',
    complexity='O(T^2 d) time, O(T d) memory (chunked)',
    implementations={"xla": selective_attention})
_scores.register_memory_efficient(
    "selective_ssa", selective_flex, ("q_temperature", "v_temperature", "position_strength"),
    example=lambda rng, h, d, t: dict(q_temperature=1.0 + _scores.normal(rng, 1, t, h),
                                      v_temperature=1.0 + _scores.normal(rng, 1, t, h),
                                      position_strength=jnp.full((h,), 0.2)))
