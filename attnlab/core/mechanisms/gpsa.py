"""ConViT gated positional self-attention (GPSA), 1-D.

Paper: "ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases"
(d'Ascoli et al., arXiv 2103.10697), GPSA::

    A_ij = (1 - sigmoid(lambda_h)) softmax_j(q_i . k_j * scale + bias_ij)
           + sigmoid(lambda_h)     softmax_j(v_pos_h . r_ij)
    A_ij <- A_ij / sum_j A_ij,          out_i = sum_j A_ij v_j

Departure: sequences are 1-D, so ``r_ij = (delta^2, delta)`` with ``delta = j - i`` (keys minus
queries, absolute positions ``q_offset + i`` and ``j``) instead of the image's
``(|delta|^2, delta_x, delta_y)``. ``v_pos_h = (p0, p1)`` (``pos_weights [H, 2]``); the
locality init ``v_pos = alpha (-1, 2 Delta_h)`` makes head h peak at offset ``Delta_h`` with
strength ``alpha`` (``score = -alpha (delta - Delta_h)^2 + const``). Both softmaxes use the same
mask, so causal masking keeps the positional attention causal (use ``Delta_h <= 0`` for a
decoder). ``bias``/``softcap``/ALiBi act on the content logits only. ``gate`` omitted: pure
content attention (softmax).
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


def positional_logits(pos_weights: Array, q_pos: Array, k_pos: Array) -> Array:
  """``p0 * delta^2 + p1 * delta`` float32 ``[1, H, Tq, Tk]``, ``delta = k_pos - q_pos``."""
  delta = (k_pos[None, :] - q_pos[:, None]).astype(jnp.float32)
  pw = pos_weights.astype(jnp.float32)
  return (pw[:, 0, None, None] * delta ** 2 + pw[:, 1, None, None] * delta)[None]


def locality_pos_weights(offsets: Any, strength: Any = 1.0) -> Array:
  """``v_pos`` for peaks at ``offsets [H]`` (key minus query) with ``strength`` alpha."""
  offsets = jnp.asarray(offsets, jnp.float32)
  strength = jnp.broadcast_to(jnp.asarray(strength, jnp.float32), offsets.shape)
  return jnp.stack([-strength, 2.0 * strength * offsets], axis=-1)


def gpsa_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                   v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                   scale: float | None = None, softcap: float | None = None,
                   alibi_slopes: Array | None = None, q_offset: Any = 0,
                   head_mask: Array | None = None, return_weights: bool = False,
                   pos_weights: Array | None = None, gate: Array | None = None):
  """GPSA; q ``[B,Tq,H,D]``, k/v ``[B,Tk,K,D]``.

  ``pos_weights``: ``[H, 2]`` coefficients of ``(delta^2, delta)`` (default 0: uniform
  positional attention). ``gate``: ``[H]`` gating logits lambda (``sigmoid`` is taken; default:
  no positional attention).
  """
  mask, bias, scale, alibi, head_mask = _scores.prepare(q, k, v, mask, bias, scale,
                                                        alibi_slopes, head_mask)
  tq, h = q.shape[1], q.shape[2]
  tk = k.shape[1]
  allowed = softmax_lib.dense_mask(mask, tq, tk)
  logits = common.dense_logits(q, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                               q_offset=q_offset)
  weights = softmax_lib.masked_softmax(logits, allowed)
  if gate is not None:
    g = jax.nn.sigmoid(_scores.head_param(gate, "gate", h))[None, :, None, None]
    if pos_weights is None:
      pos_weights = jnp.zeros((h, 2), jnp.float32)
    if pos_weights.shape != (h, 2):
      raise ValueError(f"pos_weights must have shape [heads, 2]={(h, 2)}, got "
                       f"{pos_weights.shape}")
    q_pos, k_pos = _scores.positions(tq, tk, q_offset)
    pos = softmax_lib.masked_softmax(positional_logits(pos_weights, q_pos, k_pos), allowed)
    weights = (1.0 - g) * weights + g * pos
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    weights = weights / jnp.where(denom == 0.0, 1.0, denom)
  out = common.apply_head_mask(common.weighted_values(weights, v), head_mask).astype(q.dtype)
  return (out, weights) if return_weights else out


def gpsa_flex(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
              v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
              scale: float | None = None, softcap: float | None = None,
              alibi_slopes: Array | None = None, q_offset: Any = 0,
              head_mask: Array | None = None, return_weights: bool = False,
              pos_weights: Array | None = None, gate: Array | None = None,
              implementation: str = "chunked", **opts: Any):
  """``gpsa_attention`` in O(T) memory: two calls ("chunked" or "pallas") combined by the gate.

  Content attention is plain softmax; positional attention is a second call whose score_mod
  returns ``p0 delta^2 + p1 delta`` (ignoring ``q.k``, so it runs on zero q, k of a small
  head dim); ``out = (1 - g) out_content + g out_pos``. Both rows
  sum to 1 over the same visible keys, so this is the reference's renormalised mixture.
  Departure: a row that a ``-inf`` bias empties in the content term only (the positional
  term still sees keys) gives ``g out_pos`` here, ``out_pos`` in the reference.
  """
  kw = dict(mask=mask, bias=bias, scale=scale, softcap=softcap, alibi_slopes=alibi_slopes,
            q_offset=q_offset, pos_weights=pos_weights, gate=gate)
  run = _scores.attend(implementation)
  mask, bias, scale, alibi, head_mask_ = _scores.prepare(q, k, v, mask, bias, scale,
                                                         alibi_slopes, head_mask)
  h = q.shape[2]
  opts = dict(mask=mask, q_offset=q_offset, **opts)
  out = run(q, k, v, bias=bias, scale=scale, softcap=softcap, alibi_slopes=alibi, **opts)
  if gate is not None:
    g = jax.nn.sigmoid(_scores.head_param(gate, "gate", h))[None, None, :, None]
    if pos_weights is None:
      pos_weights = jnp.zeros((h, 2), jnp.float32)
    if pos_weights.shape != (h, 2):
      raise ValueError(f"pos_weights must have shape [heads, 2]={(h, 2)}, got "
                       f"{pos_weights.shape}")
    pw = pos_weights.astype(jnp.float32)

    def positional(s, bi, hi, qi, ki):
      delta = (ki - qi).astype(jnp.float32)
      return pw[hi, 0] * delta * delta + pw[hi, 1] * delta

    zq, zk = _scores.zeros_qk(q, k, implementation)
    pos = run(zq, zk, v, scale=1.0, score_mod=positional, **opts)
    out = ((1.0 - g) * out.astype(jnp.float32) + g * pos.astype(jnp.float32)).astype(q.dtype)
  out = common.apply_head_mask(out, head_mask_)
  return _scores.with_weights(out, gpsa_attention, q, k, v, return_weights, **kw)


registry.register_mechanism(
    'gpsa', kind='module',
    paper='ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases '
          '(arXiv 2103.10697)',
    description='(1 - sigmoid(l_h)) softmax(q k^T) + sigmoid(l_h) softmax(v_pos . (delta^2, '
                'delta)), 1-D relative positions, locality init',
    complexity='O(T^2 d) time, O(T d) memory (chunked: two passes)',
    implementations={"xla": gpsa_attention})
_scores.register_memory_efficient(
    "gpsa", gpsa_flex, ("pos_weights", "gate"),
    example=lambda rng, h, d, t: dict(pos_weights=_scores.normal(rng, h, 2, scale=0.01),
                                      gate=_scores.normal(rng, h)))
