"""VMoBA: mixture-of-block attention for video-shaped token grids.

Paper: "VMoBA: Mixture-of-Block Attention for Video Diffusion Models" (Wu et al., arXiv
2506.23858). MoBA (arXiv 2502.13189) on a ``(frames, height, width)`` token grid
(``grid_shape``, row-major over the sequence; lower-rank grids work too) with:

* layer-wise cycled partitions (the NNX module picks ``partition = ("1d", "2d", "3d")
  [layer_index % 3]``): with ``block_shape = (bt, bh, bw)``, "1d" blocks are temporal chunks
  ``(bt, H, W)``, "2d" blocks are spatial patches over every frame ``(F, bh, bw)``, "3d"
  blocks are cubes ``(bt, bh, bw)`` (for a grid of rank n: "1d" blocks the first axis only,
  "2d" the last two, "3d" every axis);
* global block selection: a head keeps the ``top_k * Tq`` (query, block) pairs with the
  highest gate ``q . mean(k_block)`` over all its queries, instead of ``top_k`` per query;
* threshold selection (``threshold = tau``): a head keeps the highest pairs until their share
  of the softmax (over all its candidate pairs) of the gate reaches ``tau``.

A query always keeps its own block. ``global_selection=False`` selects per query (MoBA's
top-k, or per query the blocks covering ``tau`` of the query's gate softmax).

Masks: global selection ranks every query of a head together, so a query's blocks depend on
other (later) queries; with a mask (causal decoders) selection is therefore per query, and
candidates are the blocks whose every key is visible (as ``biformer``). Video diffusion is
bidirectional (no mask), where global selection applies. Implementations: ``"chunked"``
(region-major permutation + ``_grid.routed_block_attention``; O(T N_b) routing memory, the
selected pairs in the attention) and ``"xla"`` (dense routing mask); a full pass
(``Tq == Tk``). Departure: the paper's kernels and its exact threshold schedule are not
reproduced; the gate is not differentiated.
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
PARTITIONS = ("1d", "2d", "3d")


def partition_blocks(grid: tuple[int, ...], block_shape: Sequence[int] | None,
                     partition: str) -> np.ndarray:
  """Flat cell indices ``[N_b, R]`` of the blocks of ``partition`` (see the module doc)."""
  if partition not in PARTITIONS:
    raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}")
  n = len(grid)
  bs = tuple(block_shape) if block_shape is not None else (1,) * (n - 1) + (min(grid[-1], 4),)
  if len(bs) != n:
    raise ValueError(f"block_shape must have one size per grid axis {grid}, got {block_shape!r}")
  if partition == "1d":
    sizes = (bs[0],) + grid[1:]
  elif partition == "2d":
    sizes = grid[:1] + bs[1:] if n > 2 else grid[:n - 2] + bs[n - 2:]
  else:
    sizes = bs
  return _grid.region_layout(grid, sizes)


def vmoba_select(q: Array, k: Array, mask: Any, blocks: np.ndarray, top_k: int,
                 threshold: float | None, global_selection: bool) -> Array:
  """Bool ``[B, H, Tq, N_b]``: the blocks each query attends to (full pass, ``Tq == Tk``)."""
  tq, tk = q.shape[1], k.shape[1]
  nb, r = blocks.shape
  kbar = k.astype(jnp.float32)[:, blocks].mean(2)  # [B, N_b, K, D]
  gate = common.dense_logits(q.astype(jnp.float32), kbar, scale=1.0)  # [B, H, Tq, N_b]
  block_of = np.zeros(tk, np.int32)
  block_of[blocks.reshape(-1)] = np.repeat(np.arange(nb), r)
  own = jnp.arange(nb)[None, :] == jnp.asarray(block_of[:tq])[:, None]  # [Tq, N_b]
  cand = (jnp.ones((1, 1, tq, nb), bool) if mask is None
          else _grid.visible_regions(mask, tq, tk, blocks)[:, None])
  score = jnp.where(cand & ~own, gate, -jnp.inf)
  per_row = not global_selection or mask is not None
  axes = (-1,) if per_row else (-2, -1)
  if threshold is None:
    if per_row:
      vals, _ = jax.lax.top_k(score, min(max(top_k - 1, 1), nb))
      kth = vals[..., -1:] if top_k > 1 else jnp.full(vals.shape[:-1] + (1,), jnp.inf)
    else:
      flat = score.reshape(score.shape[:2] + (-1,))
      budget = min(max(top_k - 1, 0) * tq, flat.shape[-1])
      kth = (jax.lax.top_k(flat, budget)[0][..., -1:, None] if budget > 0
             else jnp.full(score.shape[:2] + (1, 1), jnp.inf))
    keep = (score >= kth) & (score > -jnp.inf)
  else:
    # Softmax over the candidate pairs (per row or per head), keep the highest pairs until
    # their cumulative share reaches the threshold (the pair that crosses it included).
    m = jnp.max(jnp.where(score > -jnp.inf, score, -1e30), axis=axes, keepdims=True)
    e = jnp.where(score > -jnp.inf, jnp.exp(score - m), 0.0)
    p = e / jnp.maximum(jnp.sum(e, axis=axes, keepdims=True), 1e-30)
    flat = p.reshape(p.shape[:2] + ((tq, nb) if per_row else (tq * nb,)))
    srt = -jnp.sort(-flat, axis=-1)
    before = jnp.cumsum(srt, axis=-1) - srt  # mass of the strictly higher pairs
    take = (before < threshold) & (srt > 0)
    cutoff = jnp.min(jnp.where(take, srt, jnp.inf), axis=-1, keepdims=True)
    cutoff = cutoff.reshape(cutoff.shape[:2] + ((tq, 1) if per_row else (1, 1)))
    keep = (p >= cutoff) & (p > 0)
  return jax.lax.stop_gradient(keep | own)


def _prepare(q, k, grid_shape, block_shape, partition, top_k, threshold):
  grid = _grid.check_grid(grid_shape, k.shape[1])
  top_k = _grid.check_positive_int(top_k, "top_k")
  if threshold is not None and (isinstance(threshold, bool) or not isinstance(
      threshold, (int, float)) or not 0 < threshold <= 1):
    raise ValueError(f"threshold must be None or a number in (0, 1], got {threshold!r}")
  if q.shape[1] != k.shape[1]:
    raise ValueError(f"vmoba needs a full pass (Tq == Tk), got Tq={q.shape[1]}, "
                     f"Tk={k.shape[1]}")
  return partition_blocks(grid, block_shape, partition), top_k


def vmoba_reference(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                    v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                    scale: float | None = None, softcap: float | None = None,
                    alibi_slopes: Array | None = None, q_offset: Any = 0,
                    head_mask: Array | None = None, return_weights: bool = False,
                    grid_shape: Sequence[int] | None = None,
                    block_shape: Sequence[int] | None = None, partition: str = "3d",
                    top_k: int = 3, threshold: float | None = None,
                    global_selection: bool = True):
  """VMoBA as a dense routing mask ("xla")."""
  mask, bias, scale, alibi, head_mask = _scores.prepare(q, k, v, mask, bias, scale,
                                                        alibi_slopes, head_mask)
  blocks, top_k = _prepare(q, k, grid_shape, block_shape, partition, top_k, threshold)
  tk = k.shape[1]
  keep = vmoba_select(q, k, mask, blocks, top_k, threshold, global_selection)
  block_of = np.zeros(tk, np.int32)
  block_of[blocks.reshape(-1)] = np.repeat(np.arange(blocks.shape[0]), blocks.shape[1])
  allowed = jnp.take(keep, jnp.asarray(block_of), axis=-1)
  logits = common.dense_logits(q, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                               q_offset=q_offset)
  return _scores.softmax_output(logits, v, mask, head_mask, q.dtype, return_weights,
                                allowed=allowed)


def vmoba_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                    v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                    scale: float | None = None, softcap: float | None = None,
                    alibi_slopes: Array | None = None, q_offset: Any = 0,
                    head_mask: Array | None = None, return_weights: bool = False,
                    grid_shape: Sequence[int] | None = None,
                    block_shape: Sequence[int] | None = None, partition: str = "3d",
                    top_k: int = 3, threshold: float | None = None,
                    global_selection: bool = True):
  """VMoBA over gathered blocks ("chunked"); a full pass."""
  reason = _grid.full_pass_refusal(q=q, k=k, bias=bias, alibi_slopes=alibi_slopes,
                                   q_offset=q_offset)
  if reason:
    raise ValueError(f"vmoba_attention: {reason}")
  kw = dict(grid_shape=grid_shape, block_shape=block_shape, partition=partition, top_k=top_k,
            threshold=threshold, global_selection=global_selection)
  if return_weights:
    return vmoba_reference(q, k, v, mask=mask, scale=scale, softcap=softcap,
                           head_mask=head_mask, return_weights=True, **kw)
  mask, _, scale, _, head_mask = _scores.prepare(q, k, v, mask, None, scale, None, head_mask)
  blocks, top_k = _prepare(q, k, grid_shape, block_shape, partition, top_k, threshold)
  keep = vmoba_select(q, k, mask, blocks, top_k, threshold, global_selection)
  sel = jnp.where(keep, jnp.arange(blocks.shape[0]), -1).astype(jnp.int32)
  perm = blocks.reshape(-1)
  out = _grid.routed_block_attention(q[:, perm], k[:, perm], v[:, perm], sel[:, :, perm],
                                     block_size=blocks.shape[1], scale=scale, softcap=softcap,
                                     mask=mask, k_pos=perm, q_pos=perm)
  return common.apply_head_mask(out[:, np.argsort(perm)], head_mask).astype(q.dtype)


def _supports(**call: Any) -> str | None:
  return _grid.refuse(call, vmoba_attention) or _grid.full_pass_refusal(**call)


registry.register_mechanism(
    "vmoba", kind="attention",
    paper="VMoBA: Mixture-of-Block Attention for Video Diffusion Models (arXiv 2506.23858)",
    description="MoBA on a (frames, h, w) grid: 1D/2D/3D block partitions cycled by layer, "
                "global (per head) top pairs or cumulative-threshold block selection",
    complexity="O(T N_b d) routing + O(selected pairs * R d) attention; O(T N_b) memory",
    kernel="block-sparse gather (chunked)",
    implementations={"xla": vmoba_reference})
registry.register_implementation("vmoba", "chunked", vmoba_attention, supports=_supports)
