"""Small helpers shared by the layers: dtype names, argument checks, hashable static values."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

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
