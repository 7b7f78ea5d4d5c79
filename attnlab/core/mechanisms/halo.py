"""HaloNet blocked local self-attention with halos.

Paper: "Scaling Local Self-Attention for Parameter Efficient Visual Backbones" (Vaswani et al.,
arXiv 2103.12731). The token grid (``grid_shape``, row-major over the 1D sequence; 2D for
images, 1D and 3D work the same way) is cut into ``block_size``-sided blocks; the queries of a
block attend to the keys of the block grown by ``halo`` cells on every side (``b x b`` queries,
``(b + 2h)^2`` keys in 2D), with relative logits: ``q . r_a[k_a - q_a]`` summed over the grid
axes ``a`` (HaloNet's factorised relative embeddings, one table per axis;
``rel_tables[a]`` ``[2 (b + h) - 1, H, D]``, index ``k_a - q_a + b + h - 1``).

Implementations: ``"chunked"`` (``halo_attention``) gathers every block's window, O(T (b + 2h)^n
/ b^n) work and memory (grid of ``n`` axes); ``"xla"`` (``halo_reference``) is the same
attention as a dense ``[Tq, Tk]`` mask (it also serves KV-cache decoding, ``q_offset``).

Departures: window cells outside the grid are masked (HaloNet zero-pads them and attends to
the padding); one relative table per axis and head (HaloNet shares the embedding across heads
and learns it per layer, as here, in the module). The call's mask (e.g. causal in a decoder)
applies on top of the windows.
"""

from __future__ import annotations

import math
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


def _check(grid_shape, tk, block_size, halo, rel_tables, h, d):
  grid = _grid.check_grid(grid_shape, tk)
  block_size = _grid.check_positive_int(block_size, "block_size")
  if isinstance(halo, bool) or not isinstance(halo, (int, np.integer)) or halo < 0:
    raise ValueError(f"halo must be a non-negative int, got {halo!r}")
  bad = [n for n in grid if n % block_size]
  if bad:
    raise ValueError(f"grid_shape {grid} must be divisible by block_size {block_size}")
  if rel_tables is not None:
    want = (2 * (block_size + halo) - 1, h, d)
    if len(rel_tables) != len(grid) or any(t.shape != want for t in rel_tables):
      raise ValueError(f"rel_tables must be {len(grid)} arrays (one per grid axis) of shape "
                       f"[2 * (block_size + halo) - 1, heads, head_dim]={want}, got "
                       f"{[getattr(t, 'shape', None) for t in rel_tables]}")
  return grid, block_size, int(halo)


def window_layout(grid: tuple[int, ...], b: int, halo: int):
  """Static ``(q_idx [NB, b^n], k_idx [NB, (b+2h)^n] (-1 outside), rel [n, b^n, (b+2h)^n])``."""
  n = len(grid)
  w = b + 2 * halo
  starts = np.stack(np.meshgrid(*[np.arange(0, g, b) for g in grid], indexing="ij"),
                    -1).reshape(-1, n)
  inner = np.stack(np.meshgrid(*[np.arange(b)] * n, indexing="ij"), -1).reshape(-1, n)
  win = np.stack(np.meshgrid(*[np.arange(w) - halo] * n, indexing="ij"), -1).reshape(-1, n)
  strides = np.array([math.prod(grid[a + 1:]) for a in range(n)])
  qc = starts[:, None] + inner[None]  # [NB, b^n, n]
  kc = starts[:, None] + win[None]
  inside = np.all((kc >= 0) & (kc < np.array(grid)), axis=-1)
  q_idx = (qc * strides).sum(-1)
  k_idx = np.where(inside, (kc * strides).sum(-1), -1)
  rel = (win[None, :, :] - inner[:, None, :] + b + halo - 1).transpose(2, 0, 1)
  return q_idx, k_idx, rel


def halo_reference(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                   v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                   scale: float | None = None, softcap: float | None = None,
                   alibi_slopes: Array | None = None, q_offset: Any = 0,
                   head_mask: Array | None = None, return_weights: bool = False,
                   grid_shape: Sequence[int] | None = None, block_size: int = 4, halo: int = 1,
                   rel_tables: Sequence[Array] | None = None):
  """HaloNet attention as a dense window mask ("xla"). Keys are the grid (``Tk`` cells);
  query ``i`` is cell ``q_offset + i``."""
  mask, bias, scale, alibi, head_mask = _scores.prepare(q, k, v, mask, bias, scale,
                                                        alibi_slopes, head_mask)
  tq, tk = q.shape[1], k.shape[1]
  grid, b, hl = _check(grid_shape, tk, block_size, halo, rel_tables, q.shape[2], q.shape[3])
  q_pos, k_pos = _scores.positions(tq, tk, q_offset)
  qc = _grid.grid_coords(q_pos, grid, jnp)  # [Tq, n]
  kc = _grid.grid_coords(k_pos, grid, jnp)
  start = qc // b * b
  inwin = jnp.all((kc[None] >= start[:, None] - hl) & (kc[None] < start[:, None] + b + hl), -1)
  raw = _scores.qk_raw(q, k)
  for a, table in enumerate(rel_tables or ()):
    idx = jnp.clip(kc[None, :, a] - qc[:, None, a] + b + hl - 1, 0, 2 * (b + hl) - 2)
    raw = raw + _scores.relative_term(q, table, idx)
  logits = _scores.finish_logits(raw, scale=scale, softcap=softcap, bias=bias, alibi=alibi,
                                 q_offset=q_offset)
  allowed = inwin[None, None]
  return _scores.softmax_output(logits, v, mask, head_mask, q.dtype, return_weights,
                                allowed=allowed)


def halo_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                   v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                   scale: float | None = None, softcap: float | None = None,
                   alibi_slopes: Array | None = None, q_offset: Any = 0,
                   head_mask: Array | None = None, return_weights: bool = False,
                   grid_shape: Sequence[int] | None = None, block_size: int = 4, halo: int = 1,
                   rel_tables: Sequence[Array] | None = None):
  """HaloNet attention by gathered windows ("chunked"); needs ``Tq == Tk`` and
  ``q_offset == 0`` (a full pass over the grid). Shapes as ``halo_reference``."""
  reason = _grid.full_pass_refusal(q=q, k=k, bias=bias, alibi_slopes=alibi_slopes,
                                   q_offset=q_offset)
  if reason:
    raise ValueError(f"halo_attention: {reason}")
  if return_weights:
    return halo_reference(q, k, v, mask=mask, scale=scale, softcap=softcap,
                          head_mask=head_mask, return_weights=True, grid_shape=grid_shape,
                          block_size=block_size, halo=halo, rel_tables=rel_tables)
  mask, _, scale, _, head_mask = _scores.prepare(q, k, v, mask, None, scale, None, head_mask)
  grid, b, hl = _check(grid_shape, k.shape[1], block_size, halo, rel_tables, q.shape[2],
                       q.shape[3])
  q_idx, k_idx, rel = window_layout(grid, b, hl)

  def relative(qg):  # [B, NB, b^n, H, D] -> [B, NB, H, b^n, w^n], already scaled
    total = 0.0
    for a, table in enumerate(rel_tables):
      full = jnp.einsum("bnqhd,rhd->bnhqr", qg, table, preferred_element_type=jnp.float32)
      idx = jnp.broadcast_to(jnp.asarray(rel[a])[None, None, None], full.shape[:4]
                             + (rel.shape[-1],))
      total = total + jnp.take_along_axis(full, idx, axis=-1)
    return total * jnp.float32(scale)

  out = _grid.gathered_attention(q, k, v, q_idx, k_idx, scale=scale, softcap=softcap,
                                 mask=mask,
                                 extra_logits=relative if rel_tables else None)
  return common.apply_head_mask(out, head_mask).astype(q.dtype)


def _supports(**call: Any) -> str | None:
  return _grid.refuse(call, halo_attention) or _grid.full_pass_refusal(**call)


registry.register_mechanism(
    "halo", kind="module",
    paper="Scaling Local Self-Attention for Parameter Efficient Visual Backbones "
          "(HaloNet, arXiv 2103.12731)",
    description="grid blocks of b^n queries attend to their (b + 2h)^n halo windows, "
                "factorised relative logits; grid_shape lays out the 1D sequence",
    complexity="O(T (b + 2h)^n / b^n d) time and memory (n grid axes)",
    kernel="window gather (chunked)",
    implementations={"xla": halo_reference})
registry.register_implementation("halo", "chunked", halo_attention, supports=_supports)
