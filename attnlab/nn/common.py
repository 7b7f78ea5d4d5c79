"""Small helpers shared by the layers: dtype names, argument checks, hashable static values."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_dtype(dtype: Any, name: str = "dtype") -> Any:
  """A dtype name ("float32", "bfloat16", "float16") or a jnp dtype -> jnp dtype."""
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f"{name} must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]
  try:
    return jnp.dtype(dtype).type
  except TypeError:
    raise TypeError(f"{name} must be a dtype or one of {sorted(DTYPES)}, got {dtype!r}") from None


def to_dict(x: Any) -> dict[str, Any]:
  """A mapping of keyword arguments (or None) -> plain dict."""
  if x is None:
    return {}
  if hasattr(x, "items"):
    return dict(x.items())
  raise TypeError(f"expected a mapping of keyword arguments, got {type(x).__name__}")


def freeze(x: Any) -> Any:
  """Make a (nested) config value hashable, so it can be a static module attribute."""
  if isinstance(x, dict):
    return tuple(sorted((k, freeze(v)) for k, v in x.items()))
  if isinstance(x, (list, tuple)):
    return tuple(freeze(v) for v in x)
  return x


def check_positive_int(value: Any, name: str, allow_none: bool = False) -> None:
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, "
                     f"got {value!r}")


def resolve_heads(d_model: Any, num_heads: Any, num_kv_heads: Any,
                  head_dim: Any) -> tuple[int, int]:
  """Check the head layout; return ``(num_kv_heads, head_dim)`` with their defaults filled in
  (``num_kv_heads = num_heads``, ``head_dim = d_model // num_heads``)."""
  check_positive_int(d_model, "d_model")
  check_positive_int(num_heads, "num_heads")
  check_positive_int(num_kv_heads, "num_kv_heads", allow_none=True)
  check_positive_int(head_dim, "head_dim", allow_none=True)
  num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
  if num_heads % num_kv_heads:
    raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                     f"({num_kv_heads})")
  if head_dim is None:
    if d_model % num_heads:
      raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads}) "
                       "when head_dim is None")
    head_dim = d_model // num_heads
  return num_kv_heads, head_dim


class FrozenRandom(nnx.Variable):
  """A fixed random tensor: model state, never an ``nnx.Param`` (the optimizer skips it)."""
