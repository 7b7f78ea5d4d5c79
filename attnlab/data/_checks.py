"""Small argument-validation helpers shared by the attnlab.data modules."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def check_int(name: str, value: Any, *, minimum: int | None = None,
              maximum: int | None = None) -> int:
  """Returns `value` as a Python int, or raises TypeError/ValueError naming `name`.

  Booleans are rejected (`True` is not a sequence length).
  """
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise TypeError(
        f"{name} must be an int, got {value!r} of type {type(value).__name__}.")
  value = int(value)
  if minimum is not None and value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}.")
  if maximum is not None and value > maximum:
    raise ValueError(f"{name} must be <= {maximum}, got {value}.")
  return value


def check_float(name: str, value: Any, *, minimum: float | None = None,
                maximum: float | None = None) -> float:
  """Returns `value` as a Python float, or raises TypeError/ValueError naming `name`."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
    raise TypeError(
        f"{name} must be a number, got {value!r} of type {type(value).__name__}.")
  value = float(value)
  if not np.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value}.")
  if minimum is not None and value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}.")
  if maximum is not None and value > maximum:
    raise ValueError(f"{name} must be <= {maximum}, got {value}.")
  return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
  """Returns `value` if it is one of `choices`, else raises ValueError naming `name`."""
  if value not in choices:
    raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}.")
  return value
