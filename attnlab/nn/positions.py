"""Position information: RoPE, learned and sinusoidal absolute embeddings, ALiBi slopes.

* RoPE, "RoFormer: Enhanced Transformer with Rotary Position Embedding" (arXiv 2104.09864):
  rotate pairs of q/k features by ``position * base^(-2i/D)``, so ``q_m . k_n`` depends only on
  ``m - n``. We pair feature ``i`` with ``i + D/2`` ("rotate half", as GPT-NeoX / LLaMA); the
  paper pairs ``2i`` with ``2i+1``. The two are the same up to a fixed permutation of the
  features, which the q/k projections absorb.
* RoPE scaling (``scaling=``, a ``RopeScaling``; Hugging Face's ``rope_scaling`` /
  ``rope_parameters`` dicts, formulas as transformers' ``modeling_rope_utils``): "linear"
  (position interpolation, "Extending Context Window of Large Language Models via Positional
  Interpolation", arXiv 2306.15595: every frequency divided by ``factor``); "llama3" (the
  Llama 3.1 rule, "The Llama 3 Herd of Models", arXiv 2407.21783: wavelengths longer than
  ``original_max_position_embeddings / low_freq_factor`` divided by ``factor``, shorter than
  ``... / high_freq_factor`` kept, a linear blend in between); "yarn" ("YaRN: Efficient Context
  Window Extension of Large Language Models", arXiv 2309.00071: NTK-by-parts blend of
  interpolated and original frequencies with a linear ramp between the ``beta_fast`` /
  ``beta_slow`` rotation counts, and cos/sin multiplied by the attention factor
  ``0.1 ln(factor) + 1``, i.e. logits by its square). Not supported: "dynamic" (NTK with a
  base depending on the current length) and "longrope", and ``partial_rotary_factor < 1``.
* ALiBi, "Train Short, Test Long" (arXiv 2108.12409): no embedding; per-head slopes
  (``alibi_slopes``) are handed to ``attnlab.attention`` which adds ``-slope * |i - j|``.
* Learned absolute embeddings (GPT-2 style) and the fixed sinusoids of "Attention Is All You
  Need" (arXiv 1706.03762) are added to the token embeddings at model level.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import ArrayLike, Float, Int
import numpy as np

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


ROPE_SCALING_TYPES = ("linear", "llama3", "yarn")
_SCALING_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
             "attention_factor", "mscale", "mscale_all_dim", "truncate"),
}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Scaled RoPE frequencies (static, hashable). See the module docstring for the rules;
  the fields are Hugging Face's ``rope_scaling`` keys (yarn's ``factor=None``, meaning
  ``max_position_embeddings / original_max_position_embeddings``, is resolved by the loader)."""
  rope_type: str
  factor: float
  original_max_position_embeddings: int | None = None
  low_freq_factor: float | None = None
  high_freq_factor: float | None = None
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  attention_factor: float | None = None
  mscale: float | None = None
  mscale_all_dim: float | None = None
  truncate: bool = True

  def as_dict(self) -> dict[str, Any]:
    """The Hugging Face ``rope_scaling`` dict (``rope_type`` + the keys its type reads)."""
    out: dict[str, Any] = {"rope_type": self.rope_type}
    for key in _SCALING_KEYS[self.rope_type]:
      value = getattr(self, key)
      if value is not None:
        out[key] = value
    return out


def rope_scaling(spec: Mapping[str, Any] | RopeScaling | None) -> RopeScaling | None:
  """A ``RopeScaling`` from a Hugging Face-style dict (``rope_type`` or ``type``; a
  ``rope_theta`` key is ignored), or None for no scaling (None, ``{}``, type "default")."""
  if spec is None or isinstance(spec, RopeScaling):
    return spec
  if not isinstance(spec, Mapping):
    raise TypeError(f"rope_scaling must be a mapping, a RopeScaling or None, got "
                    f"{type(spec).__name__}")
  spec = dict(spec)
  kind = spec.pop("rope_type", None)
  kind = spec.pop("type", None) if kind is None else kind
  spec.pop("type", None)
  spec.pop("rope_theta", None)
  prf = spec.get("partial_rotary_factor", 1.0)
  if prf not in (None, 1, 1.0):  # partial rotary embeddings are not implemented
    raise ValueError(f"rope_scaling partial_rotary_factor must be 1.0, got {prf!r}")
  if kind in (None, "default") and not {k: v for k, v in spec.items()
                                       if k != "partial_rotary_factor"}:
    return None
  if kind not in ROPE_SCALING_TYPES:
    raise ValueError(f"rope_scaling rope_type must be one of {list(ROPE_SCALING_TYPES)} "
                     f"(or 'default'), got {kind!r}")
  prf = spec.pop("partial_rotary_factor", 1.0)
  if prf not in (None, 1, 1.0):
    raise ValueError(f"rope_scaling partial_rotary_factor must be 1.0, got {prf!r}")
  allowed = _SCALING_KEYS[kind]
  unknown = sorted(set(spec) - set(allowed))
  if unknown:
    raise ValueError(f"rope_scaling keys {unknown} are not used by rope_type {kind!r}; "
                     f"accepted: {list(allowed)}")
  required = [k for k in allowed if k in ("factor", "low_freq_factor", "high_freq_factor",
                                           "original_max_position_embeddings")]
  missing = [k for k in required if spec.get(k) is None]
  if missing:
    raise ValueError(f"rope_scaling of rope_type {kind!r} needs {missing}, got {spec}")
  for key, val in spec.items():
    if key == "truncate":
      if not isinstance(val, (bool, type(None))):
        raise TypeError(f"rope_scaling truncate must be a bool, got {type(val).__name__} "
                        f"{val!r}")
    elif val is not None and (isinstance(val, bool) or not isinstance(val, (int, float))):
      raise TypeError(f"rope_scaling {key} must be a number, got {type(val).__name__} "
                      f"{val!r}")
  for key in ("low_freq_factor", "original_max_position_embeddings"):
    if spec.get(key) is not None and not spec[key] > 0:
      raise ValueError(f"rope_scaling {key} must be > 0, got {spec[key]!r}")
  out = RopeScaling(rope_type=kind, **{k: v for k, v in spec.items() if v is not None})
  if not out.factor > 0:
    raise ValueError(f"rope_scaling factor must be > 0, got {out.factor!r}")
  if kind == "llama3" and not out.high_freq_factor > out.low_freq_factor:
    raise ValueError(f"rope_scaling high_freq_factor must exceed low_freq_factor, got "
                     f"{out.high_freq_factor!r} <= {out.low_freq_factor!r}")
  return out


def rope_frequencies(head_dim: int, base: float = 10000.0,
                     scaling: RopeScaling | None = None) -> tuple[np.ndarray, float]:
  """``(inv_freq [head_dim // 2] float32, attention_factor)`` of (scaled) RoPE, computed in
  float64 on the host (they are static); ``attention_factor`` multiplies cos and sin."""
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head_dim, got head_dim={head_dim}")
  exponent = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
  inv_freq = 1.0 / base ** exponent
  factor, kind = (None, None) if scaling is None else (scaling.factor, scaling.rope_type)
  attention_factor = 1.0
  if kind == "linear":
    inv_freq = inv_freq / factor
  elif kind == "llama3":
    old = scaling.original_max_position_embeddings
    low_wavelen = old / scaling.low_freq_factor
    high_wavelen = old / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = ((old / wavelen - scaling.low_freq_factor)
              / (scaling.high_freq_factor - scaling.low_freq_factor))
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv_freq = np.where(medium, smoothed, scaled)
  elif kind == "yarn":
    old = scaling.original_max_position_embeddings

    def mscale(scale: float, m: float = 1.0) -> float:
      return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.attention_factor
    if attention_factor is None:
      if scaling.mscale and scaling.mscale_all_dim:
        attention_factor = mscale(factor, scaling.mscale) / mscale(factor,
                                                                   scaling.mscale_all_dim)
      else:
        attention_factor = mscale(factor)

    def correction_dim(rotations: float) -> float:
      return head_dim * math.log(old / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(scaling.beta_fast), correction_dim(scaling.beta_slow)
    if scaling.truncate:
      low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
      high += 0.001
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # weight of the original (extrapolated) frequency
    inv_freq = inv_freq / factor * (1 - keep) + inv_freq * keep
  return inv_freq.astype(np.float32), float(attention_factor)


def rope_angles(positions: Int[Array, "*batch"], head_dim: int,
                base: float = 10000.0, scaling: RopeScaling | None = None
                ) -> Float[Array, "*batch half_dim"]:
  """Float32 angles ``[..., head_dim // 2]``: ``position * base^(-2i / head_dim)`` (with
  ``scaling``: ``position * inv_freq_i`` of ``rope_frequencies``)."""
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head_dim, got head_dim={head_dim}")
  if scaling is not None:
    inv_freq = jnp.asarray(rope_frequencies(head_dim, base, scaling)[0])
  else:
    inv_freq = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  return positions.astype(jnp.float32)[..., None] * inv_freq


def apply_rope(x: Float[Array, "B T H D"], positions: Int[ArrayLike, "T"] | Int[ArrayLike, "#B T"],
               *, base: float = 10000.0, scaling: RopeScaling | None = None
               ) -> Float[Array, "B T H D"]:
  """Rotate ``x [B, T, H, D]`` by its positions (``[T]`` or ``[B, T]``, integers).

  Feature ``i < D/2`` is paired with ``i + D/2``:
  ``(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)``. Computed in float32, returned in x's
  dtype. ``scaling`` (a ``RopeScaling``; see ``rope_scaling``) changes the frequencies and,
  for yarn, multiplies cos and sin by the attention factor.
  """
  if x.ndim != 4:
    raise ValueError(f"x must have shape [batch, length, heads, head_dim], got {x.shape}")
  b, t, _, d = x.shape
  positions = check_positions(positions, b, t)
  ang = rope_angles(positions, d, base, scaling)[:, :, None, :]  # [B|1, T, 1, D/2]
  cos, sin = jnp.cos(ang), jnp.sin(ang)
  if scaling is not None:
    factor = rope_frequencies(d, base, scaling)[1]
    if factor != 1.0:
      cos, sin = cos * factor, sin * factor
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
           "rope_angles", "apply_rope", "RopeScaling", "rope_scaling", "rope_frequencies",
           "ROPE_SCALING_TYPES", "sinusoidal_embedding", "LearnedPositionEmbedding",
           "alibi_slopes"]
