"""Registry of attention mechanisms and their implementations.

A mechanism is a name (``"softmax"``, ``"sigmoid"``, ...) with one or more implementations
(``"xla"`` dense reference, ``"chunked"`` pure-JAX online version, ``"pallas"`` kernel). Each
implementation is a pure function with the shared signature::

    fn(q, k, v, *, mask=None, bias=None, scale=None, softcap=None, alibi_slopes=None,
       q_offset=0, head_mask=None, return_weights=False, **hyperparameters)
      -> out [B, Tq, H, Dv]  (or (out, weights [B, H, Tq, Tk]) when return_weights)

``supports(**call)`` may refuse a call (return a reason string) so that ``"auto"`` falls back.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

# Preference order used by implementation="auto" (first supported wins).
AUTO_ORDER = ("pallas", "chunked", "xla")


@dataclasses.dataclass
class Implementation:
  fn: Callable[..., Any]
  # Returns None if the call is supported, else a short reason.
  supports: Callable[..., str | None] = lambda **_: None
  # Platforms on which "auto" may pick it (None: all).
  auto_platforms: tuple[str, ...] | None = None


@dataclasses.dataclass
class Mechanism:
  name: str
  paper: str
  description: str
  implementations: dict[str, Implementation] = dataclasses.field(default_factory=dict)


_MECHANISMS: dict[str, Mechanism] = {}


def register_mechanism(name: str, *, paper: str = "", description: str = "") -> Mechanism:
  if name in _MECHANISMS:
    return _MECHANISMS[name]
  mech = Mechanism(name=name, paper=paper, description=description)
  _MECHANISMS[name] = mech
  return mech


def register_implementation(mechanism: str, implementation: str, fn: Callable[..., Any], *,
                            supports: Callable[..., str | None] | None = None,
                            auto_platforms: tuple[str, ...] | None = None) -> None:
  if mechanism not in _MECHANISMS:
    raise ValueError(f"register mechanism {mechanism!r} before its implementations")
  impl = Implementation(fn=fn, auto_platforms=auto_platforms)
  if supports is not None:
    impl.supports = supports
  _MECHANISMS[mechanism].implementations[implementation] = impl


def get_mechanism(name: str) -> Mechanism:
  if not isinstance(name, str) or name not in _MECHANISMS:
    raise ValueError(f"unknown mechanism {name!r}; registered mechanisms: "
                     f"{sorted(_MECHANISMS)}")
  return _MECHANISMS[name]


def list_mechanisms() -> list[str]:
  """Names of all registered attention mechanisms, sorted."""
  return sorted(_MECHANISMS)
