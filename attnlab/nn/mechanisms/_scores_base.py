"""Shared plumbing for the score-mechanism modules: parameter creation, module kwargs, and the
final call into ``attnlab.attention`` with extra (learned) arrays."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

import attnlab
from attnlab.nn import positions as positions_lib
from attnlab.nn.attention import MultiHeadAttention
from attnlab.nn.common import cfg_get, to_dict
from attnlab.nn.partitioning import logical_init

Array = jax.Array


def make_param(rngs: nnx.Rngs, init: Callable[..., Any], shape: tuple[int, ...],
               names: tuple[str | None, ...], dtype: Any) -> nnx.Param:
  """An ``nnx.Param`` of ``shape`` carrying logical axis ``names``."""
  return nnx.Param(logical_init(init, names)(rngs.params(), shape, dtype))


def constant_init(value: Any) -> Callable[..., Any]:
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.broadcast_to(jnp.asarray(value, dtype), shape).astype(dtype)
  return init


def cfg_kwargs(cfg: Any) -> dict[str, Any]:
  """``cfg.attention.kwargs`` of a model config as a dict."""
  return to_dict(cfg_get(cfg_get(cfg, "attention", {}), "kwargs", {}))


def check_kwarg(kwargs: dict[str, Any], name: str, kind: str, default: Any, mechanism: str
                ) -> Any:
  """Read and type-check one module kwarg ("int>0", "bool", "float", "float>0")."""
  val = kwargs.get(name, default)
  ok = {
      "int>0": isinstance(val, int) and not isinstance(val, bool) and val > 0,
      "bool": isinstance(val, bool),
      "float": isinstance(val, (int, float)) and not isinstance(val, bool),
      "float>0": isinstance(val, (int, float)) and not isinstance(val, bool) and val > 0,
  }[kind]
  if not ok:
    raise ValueError(f"{mechanism}: attention kwarg {name!r} must be {kind}, got {val!r}")
  return val


class ScoresAttention(MultiHeadAttention):
  """``MultiHeadAttention`` plus helpers; subclasses override ``attend`` (and
  ``project_qkv`` / ``init_cache`` where they change q/k/v)."""

  # name -> (kind, default) of the module kwargs (validated in check_config and __init__).
  kwarg_spec: dict[str, tuple[str, Any]] = {}

  @classmethod
  def check_config(cls, cfg: Any) -> None:
    super().check_config(cfg)
    mechanism = cfg_get(cfg_get(cfg, "attention", {}), "mechanism", "?")
    kwargs = cfg_kwargs(cfg)
    for name, (kind, default) in cls.kwarg_spec.items():
      check_kwarg(kwargs, name, kind, default, mechanism)

  def module_kwarg(self, name: str) -> Any:
    kind, default = self.kwarg_spec[name]
    return check_kwarg(dict(self.extra_kwargs), name, kind, default, self.mechanism)

  def call_core(self, q: Array, k: Array, v: Array, *, mask: Any, bias: Array | None,
                q_offset: Any, head_mask: Array | None, return_weights: bool,
                **extra: Any) -> Any:
    """``attnlab.attention`` with the configured mechanism, kwargs and ``extra`` arrays."""
    alibi = (jnp.asarray(positions_lib.alibi_slopes(self.num_heads))
             if self.position == "alibi" else None)
    kwargs = dict(self.core_kwargs)
    kwargs.update(extra)
    return attnlab.attention(
        q, k, v, mechanism=self.core_mechanism or self.mechanism,
        implementation=self.implementation, mask=mask, bias=bias, softcap=self.softcap,
        alibi_slopes=alibi, q_offset=q_offset, head_mask=head_mask,
        return_weights=return_weights, **kwargs)
