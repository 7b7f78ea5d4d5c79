"""ComplexFormer complex multi-head attention (CMHA).

Paper: "ComplexFormer: Disruptively Advancing Transformer Inference Ability via Head-Specific
Complex Vector Attention" (Shao et al., arXiv 2505.10222; v2 of that id is withdrawn).

Per-head Euler transform: feature ``c < D/2`` of q (and k) is paired with ``c + D/2`` as the
complex number ``z = x_c + i x_{c+D/2} = r e^{i theta}``. Score with the per-head adaptive
differential rotation ``exp(i (Adapt_h(theta_q - theta_k) + Delta_h(m - n)))``::

    A_mn = sum_c r_q r_k cos( a_h (theta_q,mc - theta_k,nc) + b_h + s_h (m - n) omega_c )
    w_mn = softmax_n(A_mn * scale + bias),   out_m = sum_n w_mn v_n

``Adapt_h(x) = a_h x + b_h`` (``phase_scale``, ``phase_bias``, ``[H]`` or ``[H, D/2]``) and
``Delta_h(p) = s_h p omega_c`` (``pos_scale`` ``[H]``), ``omega_c = rope_base^(-2c/D)``,
``m = q_offset + i`` and ``n = j`` absolute positions. Because the phase is affine in the two
angles it splits into a query phase ``a theta_q + b + s m omega`` and a key phase
``a theta_k + s n omega``, so ``A`` is a dot product of the re-rotated vectors and costs what
softmax attention costs (no ``[Tq, Tk, D]`` tensor).

Special cases: ``a = 1, b = 0, s = 1`` is RoPE (``attnlab.nn.apply_rope`` pairing); ``a = 1,
b = 0, s = 0`` is softmax attention. Departures: the paper leaves ``Adapt`` generic; we use a
learned per-head affine map of the angle difference (so ``a != 1`` has a branch cut at
``theta = +-pi``, inherent to scaling angles). GQA keys are re-rotated per query head.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Float

from attnlab.core import common
from attnlab.core.mechanisms import _scores
from attnlab.core import registry

Array = jax.Array


def rotate_polar(x: Array, pos: Array, *, phase_scale: Array, phase_bias: Array | None,
                 pos_scale: Array, rope_base: float) -> Array:
  """``x [B, T, H, D]`` -> float32 ``[B, T, H, D]``: ``r (cos a, sin a)`` with phase
  ``a = phase_scale * theta + phase_bias + pos_scale * pos * omega``.

  ``phase_scale``/``phase_bias`` broadcast to ``[H, D/2]``, ``pos_scale`` to ``[H, 1]``.
  """
  d = x.shape[-1]
  xf = x.astype(jnp.float32)
  r, theta = _scores.safe_polar(xf[..., : d // 2], xf[..., d // 2:])
  omega = rope_base ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)  # [D/2]
  ang = pos.astype(jnp.float32)[None, :, None, None] * omega  # [1, T, 1, D/2]
  phase = phase_scale * theta + pos_scale * ang
  if phase_bias is not None:
    phase = phase + phase_bias
  return jnp.concatenate([r * jnp.cos(phase), r * jnp.sin(phase)], axis=-1)


def complex_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                      v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                      scale: float | None = None, softcap: float | None = None,
                      alibi_slopes: Array | None = None, q_offset: Any = 0,
                      head_mask: Array | None = None, return_weights: bool = False,
                      phase_scale: Array | float = 1.0, phase_bias: Array | None = None,
                      pos_scale: Array | float = 1.0, rope_base: float = 10000.0):
  """CMHA; q ``[B,Tq,H,D]``, k/v ``[B,Tk,K,D]`` (D even) -> ``[B,Tq,H,Dv]``.

  ``phase_scale`` (a), ``phase_bias`` (b): scalar, ``[H]`` or ``[H, D/2]``; ``pos_scale``
  (s): scalar or ``[H]``. Defaults give RoPE.
  """
  mask, bias, scale, alibi, head_mask = _scores.prepare(q, k, v, mask, bias, scale,
                                                        alibi_slopes, head_mask)
  b, tq, h, d = q.shape
  tk = k.shape[1]
  if d % 2:
    raise ValueError(f"complex attention pairs features: head_dim must be even, got {d}")
  a = _scores.head_param(phase_scale, "phase_scale", h, (d // 2,))
  s = _scores.head_param(pos_scale, "pos_scale", h).reshape(h, 1)
  bb = None if phase_bias is None else _scores.head_param(phase_bias, "phase_bias", h,
                                                          (d // 2,))
  q_pos, k_pos = _scores.positions(tq, tk, q_offset)
  qr = rotate_polar(q, q_pos, phase_scale=a, phase_bias=bb, pos_scale=s, rope_base=rope_base)
  kr = rotate_polar(_scores.repeat_kv(k, h), k_pos, phase_scale=a, phase_bias=None,
                    pos_scale=s, rope_base=rope_base)
  logits = common.dense_logits(qr, kr, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                               q_offset=q_offset)
  return _scores.softmax_output(logits, v, mask, head_mask, q.dtype, return_weights)


registry.register_mechanism(
    'complexformer', kind='module',
    paper='ComplexFormer: Disruptively Advancing Transformer Inference Ability via '
          'Head-Specific Complex Vector Attention (arXiv 2505.10222)',
    description='sum_c r_q r_k cos(a_h (theta_q - theta_k) + b_h + s_h (m - n) omega_c); RoPE at '
                'a=1, b=0, s=1',
    complexity='O(T^2 d) time, O(T^2) memory (dense reference)',
    implementations={"xla": complex_attention})
