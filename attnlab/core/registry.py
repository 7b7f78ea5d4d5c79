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
import inspect
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


KINDS = ("attention", "module", "mixer", "pooling", "block")


@dataclasses.dataclass
class Mechanism:
  """A catalogue entry.

  ``kind``: "attention" (a pure function reachable through ``attnlab.attention``), "module"
  (an NNX attention module whose call ends in a pure core function), "mixer" (replaces
  attention), "pooling" (an encoder pooling head), "block" (a transformer-block / depth
  variant, selected by typed fields of the model config). Core knows no trainer keys: the
  config overrides that select an entry in a training config live in ``configs/mechanisms.py``.
  """
  name: str
  paper: str
  description: str
  kind: str = "attention"
  complexity: str = ""
  kernel: str = "-"
  implementations: dict[str, Implementation] = dataclasses.field(default_factory=dict)


_MECHANISMS: dict[str, Mechanism] = {}


def register_mechanism(name: str, *, paper: str = "", description: str = "",
                       kind: str = "attention", complexity: str = "", kernel: str = "-",
                       implementations: dict[str, Callable[..., Any]] | None = None
                       ) -> Mechanism:
  """Register (or update the metadata of) a mechanism; returns its entry.

  Called at the bottom of the mechanism's own file (``attnlab/core/mechanisms/<name>.py``),
  beside its pure function(s). ``implementations`` maps implementation names (``"xla"``,
  ``"chunked"``) to functions with the shared signature; each is registered with
  ``register_implementation`` (which refuses keywords the function does not take).
  """
  if not isinstance(name, str) or not name:
    raise TypeError(f"name must be a non-empty str, got {name!r}")
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  mech = _MECHANISMS.get(name)
  if mech is None:
    mech = _MECHANISMS[name] = Mechanism(name=name, paper=paper, description=description)
  for field, val in (("paper", paper), ("description", description), ("complexity", complexity)):
    if val:
      setattr(mech, field, val)
  mech.kind = kind
  if kernel != "-":
    mech.kernel = kernel
  for impl_name, fn in (implementations or {}).items():
    register_implementation(name, impl_name, fn)
  return mech


def unaccepted_kwargs(fn: Callable[..., Any], call: dict[str, Any]) -> str | None:
  """A reason string if ``fn`` cannot take every keyword of ``call`` (by its signature)."""
  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return None
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    return None
  extra = sorted(set(call) - set(params) - {"q", "k", "v"})
  return f"unexpected arguments {extra}" if extra else None


def register_implementation(mechanism: str, implementation: str, fn: Callable[..., Any], *,
                            supports: Callable[..., str | None] | None = None,
                            auto_platforms: tuple[str, ...] | None = None) -> None:
  if mechanism not in _MECHANISMS:
    raise ValueError(f"register mechanism {mechanism!r} before its implementations")
  impl = Implementation(fn=fn, auto_platforms=auto_platforms)
  if supports is not None:
    impl.supports = supports
  else:  # by default, refuse keywords the function does not take
    impl.supports = lambda **call: unaccepted_kwargs(fn, call)
  _MECHANISMS[mechanism].implementations[implementation] = impl


def get_mechanism(name: str) -> Mechanism:
  if not isinstance(name, str) or name not in _MECHANISMS:
    raise ValueError(f"unknown mechanism {name!r}; registered mechanisms: "
                     f"{sorted(_MECHANISMS)}")
  return _MECHANISMS[name]


def list_mechanisms(kind: str | None = None) -> list[str]:
  """Names of all registered mechanisms (optionally of one ``kind``), sorted."""
  if kind is not None and kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
  return sorted(n for n, m in _MECHANISMS.items() if kind is None or m.kind == kind)
