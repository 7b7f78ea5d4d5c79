"""Shared plumbing for the score-mechanism modules (``attnlab/nn/mechanisms/``): parameter
creation, hyperparameter checks, and the final call into ``attnlab.attention`` with extra
(learned) arrays."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

import attnlab
from attnlab.nn import positions as positions_lib
from attnlab.nn.attention import MultiHeadAttention
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


def check_kwarg(value: Any, name: str, kind: str, owner: str) -> Any:
  """Type-check one hyperparameter ("int>0", "bool", "float", "float>0"); returns it."""
  is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
  ok = {
      "int>0": isinstance(value, int) and not isinstance(value, bool) and value > 0,
      "bool": isinstance(value, bool),
      "float": is_num,
      "float>0": is_num and value > 0,
  }[kind]
  if not ok:
    raise ValueError(f"{owner}: {name} must be {kind}, got {value!r}")
  return value


class ScoresAttention(MultiHeadAttention):
  """``MultiHeadAttention`` plus helpers; subclasses override ``attend`` (and
  ``project_qkv`` / ``init_cache`` where they change q/k/v). The mechanism is fixed by the
  subclass (``@register_attention_module(name)``); hyperparameters are its typed keyword
  arguments."""

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
