"""FIT: local attention inside token groups interleaved with global attention over latents.

Paper: "FIT: Far-reaching Interleaved Transformers" (Chen, Li; arXiv 2305.12689). Tokens are
split into groups of ``group_size`` consecutive tokens (for images: raster chunks; FIT uses
2D patches of the grid); every group owns ``L`` latents. A FIT block interleaves local layers
(tokens attend inside their group), a read (each group's latents cross-attend to the group's
tokens), global layers (all latents self-attend) and a write (tokens cross-attend to the
latents). Here one attention call does the local step and the write together: a token
attends, in one softmax, to the keys of its own group and to the latent keys/values
(``latent_k``, ``latent_v`` ``[B, G, L, K, D]``, produced by the NNX module's read + global
step). Without latents it is plain group-local attention.

Masks and causality: the mask applies to the token keys; group ``g``'s latents are visible to a
query only when every token of group ``g`` is (read from the mask's tile summary), so in a
causal decoder a token sees the latents of complete past groups only -- the latents of its
own group summarise future tokens. Departures: groups are 1D runs of the sequence; the read
and global steps live in the module (``attnlab.nn.mechanisms.fit``), one latent step per
layer instead of FIT's stacks of local and global layers. Dense implementation ("xla"):
O(T (T + G L)) scores; the group-local gather that gives FIT its O(T (group_size + G L)) cost
is not implemented.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Float

from attnlab.core import common
from attnlab.core import masks as masks_lib
from attnlab.core import registry
from attnlab.core.mechanisms import _grid
from attnlab.core.mechanisms import _scores
from attnlab.core.mechanisms import softmax as softmax_lib

Array = jax.Array


def latent_visibility(mask: Any, tq: int, tk: int, group_size: int) -> Array:
  """Bool ``[B|1, Tq, G]``: every token of group ``g`` is visible to the query."""
  ng = -(-tk // group_size)
  if mask is None:
    return jnp.ones((1, tq, ng), bool)
  summary = mask.block_summary(tq, tk, 1, group_size)
  return jnp.asarray(summary == masks_lib.FULL)


def fit_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                  v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                  scale: float | None = None, softcap: float | None = None,
                  alibi_slopes: Array | None = None, q_offset: Any = 0,
                  head_mask: Array | None = None, return_weights: bool = False,
                  group_size: int = 8, latent_k: Array | None = None,
                  latent_v: Array | None = None):
  """Group-local attention + attention to the group latents. ``return_weights``: weights over
  the ``Tk`` token keys then the ``G * L`` latents, ``[B, H, Tq, Tk + G L]``."""
  group_size = _grid.check_positive_int(group_size, "group_size")
  mask, bias, scale, alibi, head_mask = _scores.prepare(q, k, v, mask, bias, scale,
                                                        alibi_slopes, head_mask)
  b, tq, h, d = q.shape
  tk, kh = k.shape[1], k.shape[2]
  ng = -(-tk // group_size)
  q_pos, k_pos = _scores.positions(tq, tk, q_offset)
  local = (q_pos[:, None] // group_size == k_pos[None, :] // group_size)[None, None]
  allowed = local if mask is None else local & mask.dense(tq, tk)[:, None]
  logits = common.dense_logits(q, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                               q_offset=q_offset)
  vv = v
  if (latent_k is None) != (latent_v is None):
    raise ValueError("latent_k and latent_v must be given together")
  if latent_k is not None:
    want = (b, ng)
    if (latent_k.ndim != 5 or latent_k.shape[:2] != want or latent_k.shape[3:] != (kh, d)
        or latent_v.shape[:4] != latent_k.shape[:4]):
      raise ValueError(f"latent_k / latent_v must be [batch, groups, latents, kv_heads, dim] "
                       f"with {want} leading and {(kh, d)} trailing, got {latent_k.shape}, "
                       f"{latent_v.shape}")
    nl = latent_k.shape[2]
    lk = latent_k.reshape(b, ng * nl, kh, d)
    ls = common.dense_logits(q, lk, scale=scale)
    if softcap is not None:
      ls = common.apply_softcap(ls, softcap)
    lvis = jnp.repeat(latent_visibility(mask, tq, tk, group_size), nl, axis=-1)[:, None]
    logits = jnp.concatenate([logits, ls], axis=-1)
    allowed = jnp.concatenate([jnp.broadcast_to(allowed, allowed.shape[:2] + (tq, tk)),
                               jnp.broadcast_to(lvis, lvis.shape[:2] + (tq, ng * nl))], -1)
    allowed = jnp.broadcast_to(allowed, (allowed.shape[0], h, tq, allowed.shape[-1]))
    vv = jnp.concatenate([v, latent_v.reshape(b, ng * nl, kh, -1)], axis=1)
  weights = softmax_lib.masked_softmax(logits, allowed)
  out = common.apply_head_mask(common.weighted_values(weights, vv), head_mask).astype(q.dtype)
  return (out, weights) if return_weights else out


registry.register_mechanism(
    "fit", kind="module",
    paper="FIT: Far-reaching Interleaved Transformers (arXiv 2305.12689)",
    description="tokens attend inside their group and to per-group latents (read from the "
                "group, mixed globally); complete past groups' latents only when causal",
    complexity="O(T (T + G L) d) time and memory (dense; G groups, L latents each)",
    implementations={"xla": fit_attention})
