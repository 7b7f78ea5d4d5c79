"""BiFormer bi-level routing attention (BRA).

Paper: "BiFormer: Vision Transformer with Bi-Level Routing Attention" (Zhu et al., arXiv
2303.08125). The token grid (``grid_shape``, row-major over the sequence; 1D when None) is cut
into regions of ``region_size`` cells per axis. Region level: region queries and keys are the
means of the region's q and k, the affinity ``A = Q_r K_r^T`` ``[N_r, N_r]`` keeps the
``top_k`` regions per region. Token level: every query attends (one softmax) to all tokens of
its region's ``top_k`` regions, gathered. 1D sequences are the special case of a 1D grid.

Routing modes:

* ``mask=None`` (bidirectional, the paper): region-level queries, every region a candidate.
* with a mask (causal decoders, padding): the routing must not see hidden tokens, so a token
  routes with its own query (``q_t . mean(k_region)``), candidates are the regions whose
  every key the mask shows to the token (read from the mask's tile summary, so hidden keys
  never enter a candidate's mean key), and the token's own region is always kept (the mask
  applies inside it).
  Departure from the paper, which has no masks.

Implementations: ``"chunked"`` (``biformer_attention``): the sequence is permuted into
region-major order and ``_grid.routed_block_attention`` attends to the selected regions,
O(T k R d) work, O(T d) memory (R tokens per region); ``"xla"`` (``biformer_reference``): the
same routing as a dense ``[Tq, Tk]`` mask. Both need a full pass (``Tq == Tk``) without a mask;
with a mask the reference also decodes with ``q_offset``. Other departures: no local context
enhancement (BiFormer's depthwise convolution on V); the routing is not differentiated
(top-k), as in the paper.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from attnlab.core import common
from attnlab.core import registry
from attnlab.core.mechanisms import _grid
from attnlab.core.mechanisms import _scores

Array = jax.Array


def biformer_route(q: Array, k: Array, mask: Any, regions: np.ndarray, top_k: int,
                   q_offset: Any = 0) -> Array:
  """Selected regions per query, int32 ``[B, H, Tq, min(top_k, N_r)]`` (``-1``: none)."""
  b, tq, h, d = q.shape
  tk = k.shape[1]
  nr, r = regions.shape
  kbar = k.astype(jnp.float32)[:, regions].mean(2)  # [B, N_r, K, D]
  kk = min(top_k, nr)
  if mask is None:
    if tq != tk:
      raise ValueError("biformer without a mask routes by region queries and needs a full "
                       f"pass (Tq == Tk), got Tq={tq}, Tk={tk}")
    qbar = q.astype(jnp.float32)[:, regions].mean(2)  # [B, N_r, H, D]
    gate = common.dense_logits(qbar, kbar, scale=1.0)  # [B, H, N_r, N_r]
    _, idx = jax.lax.top_k(gate, kk)
    region_of = np.zeros(tk, np.int32)
    region_of[regions.reshape(-1)] = np.repeat(np.arange(nr), r)
    return jax.lax.stop_gradient(idx[:, :, region_of[:tq]]).astype(jnp.int32)
  gate = common.dense_logits(q.astype(jnp.float32), kbar, scale=1.0)  # [B, H, Tq, N_r]
  region_of = np.zeros(tk, np.int32)
  region_of[regions.reshape(-1)] = np.repeat(np.arange(nr), r)
  qpos = jnp.arange(tq) + q_offset
  own = jnp.asarray(region_of)[jnp.clip(qpos, 0, tk - 1)]  # [Tq]
  cand = _grid.visible_regions(mask, tq, tk, regions)[:, None]  # [Bm, 1, Tq, N_r]
  is_own = jnp.arange(nr)[None, :] == own[:, None]
  score = jnp.where(cand, gate, -jnp.inf)
  score = jnp.where(is_own, jnp.inf, score)
  vals, idx = jax.lax.top_k(score, kk)
  return jax.lax.stop_gradient(jnp.where(vals > -jnp.inf, idx, -1)).astype(jnp.int32)


def _prepare(q, k, grid_shape, region_size, top_k):
  grid = _grid.check_grid(grid_shape, k.shape[1])
  return _grid.region_layout(grid, region_size), _grid.check_positive_int(top_k, "top_k")


def biformer_reference(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                       v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                       scale: float | None = None, softcap: float | None = None,
                       alibi_slopes: Array | None = None, q_offset: Any = 0,
                       head_mask: Array | None = None, return_weights: bool = False,
                       grid_shape: Sequence[int] | None = None, region_size: Any = 4,
                       top_k: int = 2):
  """Bi-level routing attention as a dense routing mask ("xla")."""
  mask, bias, scale, alibi, head_mask = _scores.prepare(q, k, v, mask, bias, scale,
                                                        alibi_slopes, head_mask)
  regions, top_k = _prepare(q, k, grid_shape, region_size, top_k)
  tk = k.shape[1]
  sel = biformer_route(q, k, mask, regions, top_k, q_offset)  # [B, H, Tq, k]
  region_of = np.zeros(tk, np.int32)
  region_of[regions.reshape(-1)] = np.repeat(np.arange(regions.shape[0]), regions.shape[1])
  allowed = jnp.any(sel[..., None] == jnp.asarray(region_of), axis=-2)
  logits = common.dense_logits(q, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                               q_offset=q_offset)
  return _scores.softmax_output(logits, v, mask, head_mask, q.dtype, return_weights,
                                allowed=allowed)


def biformer_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                       v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                       scale: float | None = None, softcap: float | None = None,
                       alibi_slopes: Array | None = None, q_offset: Any = 0,
                       head_mask: Array | None = None, return_weights: bool = False,
                       grid_shape: Sequence[int] | None = None, region_size: Any = 4,
                       top_k: int = 2):
  """Bi-level routing attention over gathered regions ("chunked"); a full pass."""
  reason = _grid.full_pass_refusal(q=q, k=k, bias=bias, alibi_slopes=alibi_slopes,
                                   q_offset=q_offset)
  if reason:
    raise ValueError(f"biformer_attention: {reason}")
  if return_weights:
    return biformer_reference(q, k, v, mask=mask, scale=scale, softcap=softcap,
                              head_mask=head_mask, return_weights=True, grid_shape=grid_shape,
                              region_size=region_size, top_k=top_k)
  mask, _, scale, _, head_mask = _scores.prepare(q, k, v, mask, None, scale, None, head_mask)
  regions, top_k = _prepare(q, k, grid_shape, region_size, top_k)
  sel = biformer_route(q, k, mask, regions, top_k)
  perm = regions.reshape(-1)  # region-major order; region j = permuted block j
  inv = np.argsort(perm)
  out = _grid.routed_block_attention(q[:, perm], k[:, perm], v[:, perm], sel[:, :, perm],
                                     block_size=regions.shape[1], scale=scale,
                                     softcap=softcap, mask=mask, k_pos=perm, q_pos=perm)
  return common.apply_head_mask(out[:, inv], head_mask).astype(q.dtype)


def _supports(**call: Any) -> str | None:
  return _grid.refuse(call, biformer_attention) or _grid.full_pass_refusal(**call)


registry.register_mechanism(
    "biformer", kind="attention",
    paper="BiFormer: Vision Transformer with Bi-Level Routing Attention (arXiv 2303.08125)",
    description="region affinity of mean q / k, top-k regions per region, token attention "
                "over the gathered regions; grid_shape lays out the sequence (1D: None)",
    complexity="O(T k R d + N_r^2 d) time, O(T d) memory (R tokens per region)",
    kernel="block-sparse gather (chunked)",
    implementations={"xla": biformer_reference})
registry.register_implementation("biformer", "chunked", biformer_attention,
                                 supports=_supports)
