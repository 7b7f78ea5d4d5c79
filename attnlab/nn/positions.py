"""Position information: RoPE, learned and sinusoidal absolute embeddings, ALiBi slopes.

* RoPE, "RoFormer: Enhanced Transformer with Rotary Position Embedding" (arXiv 2104.09864):
  rotate pairs of q/k features by ``position * base^(-2i/D)``, so ``q_m . k_n`` depends only on
  ``m - n``. We pair feature ``i`` with ``i + D/2`` ("rotate half", as GPT-NeoX / LLaMA); the
  paper pairs ``2i`` with ``2i+1``. The two are the same up to a fixed permutation of the
  features, which the q/k projections absorb.
* ALiBi, "Train Short, Test Long" (arXiv 2108.12409): no embedding; per-head slopes
  (``alibi_slopes``) are handed to ``attnlab.attention`` which adds ``-slope * |i - j|``.
* Learned absolute embeddings (GPT-2 style) and the fixed sinusoids of "Attention Is All You
  Need" (arXiv 1706.03762) are added to the token embeddings at model level.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import ArrayLike, Float, Int

from attnlab.core.common import alibi_slopes
from attnlab.nn.partitioning import logical_init

Array = jax.Array

POSITION_KINDS = ("rope", "learned", "sinusoidal", "alibi", "none")


def check_position_kind(position: Any) -> str:
  if position not in POSITION_KINDS:
    raise ValueError(f"position must be one of {list(POSITION_KINDS)}, got {position!r}")
  return position


def default_positions(batch: int, length: int, offset: Any = 0) -> Int[Array, "B T"]:
  """``[batch, length]`` int32 positions ``offset, offset+1, ...``."""
  pos = jnp.arange(length, dtype=jnp.int32) + jnp.asarray(offset, jnp.int32)
  return jnp.broadcast_to(pos[None], (batch, length))


def check_positions(positions: Any, batch: int, length: int,
                    name: str = "positions") -> Int[Array, "#B T"]:
  """Accept ``[T]`` or ``[B|1, T]`` integer positions; return ``[B|1, T]``."""
  positions = jnp.asarray(positions)
  if not jnp.issubdtype(positions.dtype, jnp.integer):
    raise TypeError(f"{name} must be integer, got dtype {positions.dtype}")
  if positions.ndim == 1:
    positions = positions[None]
  if positions.ndim != 2 or positions.shape[1] != length or positions.shape[0] not in (1, batch):
    raise ValueError(f"{name} must have shape [length]=({length},) or [batch, length]="
                     f"({batch}, {length}), got {jnp.shape(positions)}")
  return positions


def rope_angles(positions: Int[Array, "*batch"], head_dim: int,
                base: float = 10000.0) -> Float[Array, "*batch half_dim"]:
  """Float32 angles ``[..., head_dim // 2]``: ``position * base^(-2i / head_dim)``."""
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head_dim, got head_dim={head_dim}")
  inv_freq = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  return positions.astype(jnp.float32)[..., None] * inv_freq


def apply_rope(x: Float[Array, "B T H D"], positions: Int[ArrayLike, "T"] | Int[ArrayLike, "#B T"],
               *, base: float = 10000.0) -> Float[Array, "B T H D"]:
  """Rotate ``x [B, T, H, D]`` by its positions (``[T]`` or ``[B, T]``, integers).

  Feature ``i < D/2`` is paired with ``i + D/2``:
  ``(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)``. Computed in float32, returned in x's
  dtype.
  """
  if x.ndim != 4:
    raise ValueError(f"x must have shape [batch, length, heads, head_dim], got {x.shape}")
  b, t, _, d = x.shape
  positions = check_positions(positions, b, t)
  ang = rope_angles(positions, d, base)[:, :, None, :]  # [B|1, T, 1, D/2]
  cos, sin = jnp.cos(ang), jnp.sin(ang)
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., : d // 2], xf[..., d // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def sinusoidal_embedding(positions: Int[ArrayLike, "T"] | Int[ArrayLike, "#B T"], dim: int, *,
                         base: float = 10000.0) -> Float[Array, "#B T dim"]:
  """Fixed sinusoids ``[B|1, T, dim]`` float32: ``[sin(p w_i), cos(p w_i)]``, w_i = base^(-2i/dim).

  ``positions`` is ``[T]`` or ``[B, T]`` (integers). Sines fill the first half of the features,
  cosines the second (a permutation of the paper's interleaving).
  """
  if dim % 2:
    raise ValueError(f"sinusoidal embedding needs an even dim, got dim={dim}")
  positions = jnp.asarray(positions)
  if positions.ndim == 1:
    positions = positions[None]
  if positions.ndim != 2:
    raise ValueError(f"positions must have shape [length] or [batch, length], got "
                     f"{positions.shape}")
  ang = rope_angles(positions, dim, base)
  return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)


class LearnedPositionEmbedding(nnx.Module):
  """Learned absolute position table ``[max_len, dim]`` (logical axes ``position, embed``)."""

  def __init__(self, max_len: int, dim: int, *, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if not isinstance(max_len, int) or max_len <= 0:
      raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    self.max_len = max_len
    self.embed = nnx.Embed(
        max_len, dim, dtype=dtype, param_dtype=param_dtype,
        embedding_init=logical_init(nnx.initializers.normal(0.02), ("position", "embed")),
        rngs=rngs)

  def __call__(self, positions: Int[ArrayLike, "T"] | Int[ArrayLike, "#B T"]
               ) -> Float[Array, "#B T dim"]:
    """``positions [T]`` or ``[B, T]`` -> ``[B|1, T, dim]``. Positions >= max_len are clipped."""
    positions = jnp.asarray(positions)
    if positions.ndim == 1:
      positions = positions[None]
    return self.embed(jnp.clip(positions, 0, self.max_len - 1))


__all__ = ["POSITION_KINDS", "check_position_kind", "check_positions", "default_positions",
           "rope_angles", "apply_rope", "sinusoidal_embedding", "LearnedPositionEmbedding",
           "alibi_slopes"]
