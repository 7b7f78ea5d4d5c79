"""FiRST layer routers: a small MLP on a layer's input that gates the whole block.

``LayerRouter`` lives in a routed ``TransformerBlock`` (``config.model.router``); the block
computes its output ``y`` and the router mixes it with the input ``x`` (pure functions of
``attnlab.core.variants.routing``):

* training / non-decoding calls: ``x + g (y - x)`` with ``g = p`` ("soft") or the
  straight-through hard gate;
* decoding, ``decode_policy="token"``: ``g = 1[p >= threshold]`` per token. The block's
  attention still wrote the token's K/V (computed from the layer input, which passes through),
  so the cache stays complete for later tokens that run the layer;
* decoding, ``decode_policy="prefill"`` (FiRST): the first decode call after ``init_cache``
  (the prompt) runs the layer and stores ``mean_t p >= threshold`` per example; every later
  decode call uses that decision.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.core.variants import routing as routing_core
from attnlab.nn.common import check_positive_int
from attnlab.nn.partitioning import logical_init

Array = jax.Array


class LayerRouter(nnx.Module):
  """Router ``p = sigmoid(w2 . relu(x W1 + b1) + b2)``; parameters ``w1 [embed, R]``,
  ``b1 [R]``, ``w2 [R]``, ``b2 []``. ``b2`` starts at ``init_bias`` (execute-leaning)."""

  def __init__(self, d_model: int, *, hidden_dim: int = 16, threshold: float = 0.5,
               train_gate: str = "soft", decode_policy: str = "token", init_bias: float = 3.0,
               rngs: nnx.Rngs):
    check_positive_int(d_model, "d_model")
    check_positive_int(hidden_dim, "router.hidden_dim")
    check_router_values(threshold, train_gate, decode_policy, init_bias)
    self.threshold, self.train_gate = float(threshold), train_gate
    self.decode_policy = decode_policy
    r = hidden_dim
    lecun = nnx.initializers.lecun_normal()
    self.w1 = nnx.Param(logical_init(lecun, ("embed", None))(rngs.params(), (d_model, r)))
    self.b1 = nnx.Param(logical_init(nnx.initializers.zeros_init(), (None,))(
        rngs.params(), (r,)))
    self.w2 = nnx.Param(logical_init(nnx.initializers.normal(0.02), (None,))(
        rngs.params(), (r,)))
    bias = float(init_bias)
    self.b2 = nnx.Param(logical_init(lambda key, shape, dtype=jnp.float32: jnp.full(
        shape, bias, dtype), ())(rngs.params(), ()))
    self.decision = nnx.data(None)
    self.cache_index = nnx.data(None)


  def init_cache(self, batch: int) -> None:
    """Decoding state: per-example decision (prefill policy) and a token counter."""
    check_positive_int(batch, "batch")
    self.decision = nnx.Cache(jnp.ones((batch,), jnp.bool_))
    self.cache_index = nnx.Cache(jnp.zeros((), jnp.int32))

  def probability(self, x: Array) -> Array:
    """Execution probability per token ``[B, T]`` from the layer input ``x [B, T, E]``."""
    return routing_core.router_probability(x, self.w1[...], self.b1[...], self.w2[...],
                                           self.b2[...])

  def gate(self, x: Array, *, decode: bool = False) -> Array:
    """Gate ``[B, T]`` in [0, 1] (1 = execute the layer)."""
    p = self.probability(x)
    if not decode:
      return routing_core.train_gate(p, self.train_gate, self.threshold)
    if self.cache_index is None:
      raise ValueError("decode=True needs the router's cache: call init_cache first")
    if self.decode_policy == "token":
      g = routing_core.hard_gate(p, self.threshold)
    else:  # "prefill": decide once from the prompt, keep it for every generated token
      index = self.cache_index[...]
      is_prefill = index == 0
      new = routing_core.prefill_decision(p, self.threshold)
      decision = jnp.where(is_prefill, new, self.decision[...])
      self.decision[...] = decision
      g = jnp.where(is_prefill, 1.0, decision.astype(jnp.float32))[:, None]
      g = jnp.broadcast_to(g, p.shape)
    self.cache_index[...] = self.cache_index[...] + x.shape[1]
    return g

  def __call__(self, x: Array, y: Array, *, decode: bool = False) -> Array:
    """``x + g (y - x)``: the block output ``y`` where the layer runs, ``x`` where skipped."""
    return routing_core.gated_residual(x, y, self.gate(x, decode=decode))


def check_router_values(threshold: Any, train_gate: Any, decode_policy: Any,
                        init_bias: Any) -> None:
  if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
      0.0 < threshold < 1.0):
    raise ValueError(f"router.threshold must be in (0, 1), got {threshold!r}")
  if train_gate not in routing_core.TRAIN_GATES:
    raise ValueError(f"router.train_gate must be one of {list(routing_core.TRAIN_GATES)}, got "
                     f"{train_gate!r}")
  if decode_policy not in routing_core.DECODE_POLICIES:
    raise ValueError(f"router.decode_policy must be one of "
                     f"{list(routing_core.DECODE_POLICIES)}, got {decode_policy!r}")
  if isinstance(init_bias, bool) or not isinstance(init_bias, (int, float)):
    raise ValueError(f"router.init_bias must be a number, got {init_bias!r}")
