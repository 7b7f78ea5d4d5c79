"""NiNformer token mixing: a token-mixing MLP generates an element-wise gate.

"NiNformer: A Network in Network Transformer with Token Mixing Generated Gating Function"
(Abdullah & Aydin, arXiv 2403.02411). The attention sub-layer is replaced by a "mixer gating
unit": an inner MLP-Mixer block ``v`` (token mixing across positions, then channel mixing)
produces a gate that multiplies a linear projection ``u`` of the same (normalised) input::

    z      = LN_t(x)
    h_j    = gelu(sum_k W1[j, k] z_k + b1[j])                 (token MLP, per channel)
    t_i    = sum_j W2[i, j] h_j + b2[i]
    v      = (x + t) + MLP_c(LN_c(x + t))                     (channel MLP, per token)
    out    = (x W_p + b_p) * v

``x`` is the block's pre-normed input (the paper's NiN block applies its LayerNorm first).

Departures:

* Causal LM: the token MLP is masked. Hidden unit ``j`` (with ``token_expansion`` replicas)
  belongs to position ``j``; ``W1[j, k]`` is kept only where ``allowed[j, k]`` and
  ``W2[i, j]`` only where ``allowed[i, j]`` (lower-triangular for a causal mask, so output ``i``
  depends on inputs ``<= i``; segment masks of packed sequences are honoured the same way).
  The paper's token MLP is dense (bidirectional images).
* The token weights are sized for ``max_len`` positions; a shorter input uses the leading
  ``T x T`` block. For a causal mask this equals running on ``max_len`` positions (outputs
  never read later positions); for bidirectional use it is a truncation (MLP-Mixer needs a
  fixed length).
* The paper's token MLP hidden size is a free ``d_ffn``; here it is ``token_expansion * T``
  (hidden units tied to positions, which makes the causal masking well defined).
* Dropout inside the mixer is left out (the block applies dropout to the sub-layer output).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from attnlab.core.mechanisms._mixers import check_allowed, f32, layer_norm
from attnlab.core import registry

Array = jax.Array

PARAM_SHAPES = {
    # name: shape as a function of (E, T_max, R token expansion, C channel hidden)
    "proj_w": lambda e, t, r, c: (e, e), "proj_b": lambda e, t, r, c: (e,),
    "ln_token_scale": lambda e, t, r, c: (e,), "ln_token_bias": lambda e, t, r, c: (e,),
    "token_w1": lambda e, t, r, c: (t, r, t), "token_b1": lambda e, t, r, c: (t, r),
    "token_w2": lambda e, t, r, c: (t, t, r), "token_b2": lambda e, t, r, c: (t,),
    "ln_channel_scale": lambda e, t, r, c: (e,), "ln_channel_bias": lambda e, t, r, c: (e,),
    "channel_w1": lambda e, t, r, c: (e, c), "channel_b1": lambda e, t, r, c: (c,),
    "channel_w2": lambda e, t, r, c: (c, e), "channel_b2": lambda e, t, r, c: (e,),
}


def token_mlp(z: Array, w1: Array, b1: Array, w2: Array, b2: Array,
              allowed: Array | None = None) -> Array:
  """Masked token-mixing MLP over positions, per channel.

  ``z [B, T, C]``; ``w1 [Tmax, R, Tmax]`` (hidden position j, replica r, input k), ``b1
  [Tmax, R]``, ``w2 [Tmax, Tmax, R]`` (output i, hidden j, replica r), ``b2 [Tmax]``;
  ``allowed [B|1, T, T]``. Returns ``[B, T, C]`` float32.
  """
  b, t, _ = z.shape
  if t > w1.shape[0]:
    raise ValueError(f"sequence length {t} exceeds the token-mixing size {w1.shape[0]} "
                     "(model max_len)")
  w1, b1 = f32(w1)[:t, :, :t], f32(b1)[:t]
  w2, b2 = f32(w2)[:t, :t, :], f32(b2)[:t]
  allowed = check_allowed(allowed, b, t, t)
  if allowed is None:
    h = jnp.einsum("jrk,bkc->bjrc", w1, f32(z)) + b1[None, :, :, None]
    h = jax.nn.gelu(h, approximate=False)
    return jnp.einsum("ijr,bjrc->bic", w2, h) + b2[None, :, None]
  a = allowed.astype(jnp.float32)
  h = jnp.einsum("jrk,bjk,bkc->bjrc", w1, a, f32(z)) + b1[None, :, :, None]
  h = jax.nn.gelu(h, approximate=False)
  return jnp.einsum("ijr,bij,bjrc->bic", w2, a, h) + b2[None, :, None]


def ninformer_mixing(x: Array, params: Mapping[str, Any], *, allowed: Array | None = None,
                     eps: float = 1e-6) -> Array:
  """The NiNformer mixer gating unit (see the module docstring).

  Args:
    x: ``[B, T, E]`` (the block's normalised input).
    params: arrays named as ``PARAM_SHAPES``.
    allowed: bool ``[B|1, T, T]`` (causal / segment mask) or None for full mixing.
    eps: LayerNorm epsilon.

  Returns:
    ``[B, T, E]`` in x's dtype.
  """
  p = params
  xf = f32(x)
  z = layer_norm(xf, p["ln_token_scale"], p["ln_token_bias"], eps)
  v = xf + token_mlp(z, p["token_w1"], p["token_b1"], p["token_w2"], p["token_b2"], allowed)
  c = layer_norm(v, p["ln_channel_scale"], p["ln_channel_bias"], eps)
  c = jax.nn.gelu(c @ f32(p["channel_w1"]) + f32(p["channel_b1"]), approximate=False)
  v = v + c @ f32(p["channel_w2"]) + f32(p["channel_b2"])
  u = xf @ f32(p["proj_w"]) + f32(p["proj_b"])
  return (u * v).astype(x.dtype)


registry.register_mechanism(
    'ninformer', kind='mixer',
    paper='NiNformer: A Network in Network Transformer with Token Mixing Generated Gating '
          'Function (arXiv 2403.02411)',
    description='(x W_p + b_p) * MixerBlock(x): token-mixing MLP over positions (lower-triangular '
                'for causal LM) then channel MLP, as an element-wise gate',
    complexity='O(T^2 d r) time, O(T^2 r) parameters (r = token_expansion, T = max_len)')
