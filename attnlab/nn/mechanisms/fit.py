"""FIT module (arXiv 2305.12689), ending in ``attnlab.core.mechanisms.fit.fit_attention``.

Parameters: ``num_latents`` learned latents ``[L, E]`` (normal 0.02), shared by every group.
Per call, with the layer's own q/k/v/o projections:

1. read: each group's latents (queries ``q(latents)``) attend to the keys/values of the
   group's tokens (all of the group; no causal mask inside the read), residual added;
2. global: the latents of all groups self-attend (group-causal in a causal model: group ``g``'s
   latents see groups ``<= g``), residual added;
3. local + write (the core function): tokens attend to their group and to the latent keys /
   values ``k(z)``, ``v(z)``; a causal model sees complete past groups' latents only.

Departure: one read/global step per layer with the attention's projections (FIT has separate
local and global layer stacks with their own weights and MLPs). KV-cache decoding recomputes
the latents from the cache each step. Shapes: x ``[B, T, E]`` -> ``[B, T, E]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.core.mechanisms import softmax as softmax_lib
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._scores_base import ScoresAttention, check_kwarg, make_param

Array = jax.Array


def _attend(qx: Array, kx: Array, vx: Array, allowed: Array | None) -> Array:
  """Softmax attention ``[..., Tq, H, D]`` x ``[..., Tk, K, D]`` (GQA), ``allowed``
  broadcastable to ``[..., H, Tq, Tk]``."""
  h, kh = qx.shape[-2], kx.shape[-2]
  kx, vx = jnp.repeat(kx, h // kh, axis=-2), jnp.repeat(vx, h // kh, axis=-2)
  s = jnp.einsum("...qhd,...khd->...hqk", qx, kx) / jnp.sqrt(qx.shape[-1]).astype(qx.dtype)
  p = softmax_lib.masked_softmax(s.astype(jnp.float32), allowed)
  return jnp.einsum("...hqk,...khd->...qhd", p.astype(vx.dtype), vx)


@register_attention_module("fit")
class FITAttention(ScoresAttention):
  """FIT attention over ``x [B, T, E]``. Args: ``group_size``, ``num_latents`` (per group);
  ``**kwargs``: MultiHeadAttention's."""

  def __init__(self, d_model: int, num_heads: int, *, group_size: int = 8,
               num_latents: int = 2, rngs: nnx.Rngs, **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    self.group_size = check_kwarg(group_size, "group_size", "int>0", "fit")
    self.num_latents = check_kwarg(num_latents, "num_latents", "int>0", "fit")
    self.latents = make_param(rngs, nnx.initializers.normal(0.02), (num_latents, d_model),
                              (None, "embed"), self.param_dtype)

  def latent_kv(self, k: Array, v: Array) -> tuple[Array, Array]:
    """Read + global step: ``(latent_k, latent_v)`` ``[B, G, L, K, D]`` from the token
    keys/values ``[B, T, K, D]``."""
    b, t = k.shape[:2]
    gs, nl = self.group_size, self.num_latents
    ng = -(-t // gs)
    pad = ng * gs - t
    valid = (jnp.arange(ng * gs) < t).reshape(ng, 1, 1, gs)  # [G, 1(H), 1(Tq), gs]
    kg = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, ng, gs, *k.shape[2:])
    vg = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, ng, gs, *v.shape[2:])
    z0 = self.latents[...].astype(self.dtype)  # [L, E]
    zq = jnp.broadcast_to(self.q(z0[None])[:, None], (b, ng, nl, self.num_heads, self.head_dim))
    read = _attend(zq, kg, vg, valid).reshape(b, ng * nl, self.num_heads, self.head_dim)
    zf = jnp.tile(z0, (ng, 1))[None] + self.o(read)  # [B, G * L, E]
    gid = jnp.arange(ng * nl) // nl
    allowed = (gid[None, :] <= gid[:, None]) if self.causal else None
    zf = zf + self.o(_attend(self.q(zf), self.k(zf), self.v(zf), allowed))
    lk = self.k(zf).reshape(b, ng, nl, self.num_kv_heads, self.head_dim)
    lv = self.v(zf).reshape(b, ng, nl, self.num_kv_heads, self.head_dim)
    return lk, lv

  def attend(self, q, k, v, *, mask, bias, q_offset, head_mask, return_weights):
    lk, lv = self.latent_kv(k, v)
    return self.call_core(q, k, v, mask=mask, bias=bias, q_offset=q_offset,
                          head_mask=head_mask, return_weights=return_weights,
                          group_size=self.group_size, latent_k=lk, latent_v=lv)
