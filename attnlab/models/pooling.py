"""Attention pooling heads for ``EncoderClassifier`` (``config.model.pooling``), ending in
``attnlab.core.pooling.lowrank_multihead_pool`` / ``multilayer_trainable_pool``; they live with
the encoder model. A head is a class registered with ``@register_pooling(name)`` and built as
``cls(d_model, *, num_layers, model_heads, <its typed hyperparameters>, rngs)``; the model
builder passes ``config.model.pooling_kwargs`` as those hyperparameters. It provides ``out_dim``
(the pooled width the classifier reads), ``all_layers`` (True: the encoder passes every layer's
hidden states) and ``__call__(x [B, T, D], *, valid [B, T] | None, hiddens [L, B, T, D] | None)
-> [B, out_dim]``.

* ``LowRankMHAPool`` (LAMA, arXiv 1912.00835). Options: ``num_heads``
  (int > 0, 4), ``rank`` (int > 0, 1), ``context`` ("learned" | "mean"), ``l2_normalize``
  (bool, True). ``out_dim = num_heads * d_model`` (the heads' pooled vectors concatenated).
* ``MultiLayerPool`` (Multi-Layers Trainable Pooling, arXiv 2409.02727).
  Options: ``num_latents`` (int > 0, 16), ``num_heads`` (int >= 0, 0 = the model's),
  ``head_dim`` (int >= 0, 0 = d_model // num_heads), ``ff_mult`` (int > 0, 4), ``summary``
  ("mean" | "last"), ``normalize`` (bool, True). ``out_dim = d_model``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
from flax import nnx

from attnlab.core import pooling as core
from attnlab.nn.mechanisms._mixer_base import (check_value, lecun, make_param, normal_init,
                                               ones, zeros)

Array = jax.Array

BUILTIN_POOLINGS = ("mean", "cls")
POOLINGS: dict[str, type] = {}


def register_pooling(name: str, cls: type | None = None) -> Any:
  """Make ``cls`` selectable as ``config.model.pooling = name`` (call or class decorator).

  ``cls(d_model, *, num_layers, model_heads, **pooling_kwargs, rngs)`` must provide ``out_dim``,
  ``all_layers`` (bool) and ``__call__(x [B, T, D], *, valid [B, T] | None, hiddens
  [L, B, T, D] | None) -> [B, out_dim]``. ``hiddens`` (every block's output, the last after the
  final norm) is passed when ``all_layers``.
  """
  if cls is None:
    return lambda c: register_pooling(name, c)
  if name in BUILTIN_POOLINGS:
    raise ValueError(f"pooling {name!r} is built in")
  POOLINGS[name] = cls
  return cls


def list_poolings() -> list[str]:
  return sorted(set(BUILTIN_POOLINGS) | set(POOLINGS))


class PoolingHead(nnx.Module):
  """Base of the attention pooling heads: the shared constructor arguments."""

  all_layers: ClassVar[bool] = False

  def __init__(self, d_model: int, *, num_layers: int = 1, model_heads: int = 1,
               rngs: nnx.Rngs):
    del rngs
    for name, val in (("d_model", d_model), ("num_layers", num_layers),
                      ("model_heads", model_heads)):
      check_value(val, name, "int>0", type(self).__name__)
    self.d_model, self.num_layers, self.model_heads = d_model, num_layers, model_heads


@register_pooling("lowrank_mha_pool")
class LowRankMHAPool(PoolingHead):
  """LAMA pooling; see the module docstring."""

  def __init__(self, d_model: int, *, num_heads: int = 4, rank: int = 1,
               context: str = "learned", l2_normalize: bool = True, rngs: nnx.Rngs,
               **kwargs: Any):
    super().__init__(d_model, rngs=rngs, **kwargs)
    owner = "lowrank_mha_pool"
    check_value(num_heads, "num_heads", "int>0", owner)
    check_value(rank, "rank", "int>0", owner)
    check_value(context, "context", core.CONTEXTS, owner)
    self.l2_normalize = check_value(l2_normalize, "l2_normalize", "bool", owner)
    d, m, r = self.d_model, num_heads, rank
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0,
                                             out_axis=(1, 2))
    self.p = make_param(rngs, init, (d, m, r), ("embed", None, None))
    self.q = make_param(rngs, init, (d, m, r), ("embed", None, None))
    self.context = nnx.data(None)
    if context == "learned":
      self.context = make_param(rngs, normal_init(1.0 / math.sqrt(d)), (d,), ("embed",))
    self.out_dim = m * d

  def __call__(self, x: Array, *, valid: Array | None = None,
               hiddens: Array | None = None, return_weights: bool = False) -> Any:
    del hiddens
    c = None if self.context is None else self.context[...]
    pooled, weights = core.lowrank_multihead_pool(
        x, self.p[...], self.q[...], context=c, valid=valid,
        l2_normalize=self.l2_normalize)
    return (pooled, weights) if return_weights else pooled


@register_pooling("multilayer_pool")
class MultiLayerPool(PoolingHead):
  """Multi-Layers Trainable Pooling; see the module docstring."""

  all_layers = True

  def __init__(self, d_model: int, *, num_latents: int = 16, num_heads: int = 0,
               head_dim: int = 0, ff_mult: int = 4, summary: str = "mean",
               normalize: bool = True, num_layers: int = 1, model_heads: int = 1,
               rngs: nnx.Rngs):
    super().__init__(d_model, num_layers=num_layers, model_heads=model_heads, rngs=rngs)
    owner = "multilayer_pool"
    check_value(num_latents, "num_latents", "int>0", owner)
    check_value(num_heads, "num_heads", "int>=0", owner)
    check_value(head_dim, "head_dim", "int>=0", owner)
    check_value(ff_mult, "ff_mult", "int>0", owner)
    self.summary = check_value(summary, "summary", core.SUMMARIES, owner)
    self.normalize = check_value(normalize, "normalize", "bool", owner)
    d, n_layers = self.d_model, num_layers
    h = num_heads or model_heads
    dh = head_dim or max(1, d // h)
    f = ff_mult * d
    self.num_heads = h
    fan_in = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0,
                                               out_axis=(1, 2))
    fan_in_o = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                 in_axis=(0, 1), out_axis=2)
    shapes = {
        "layer_emb": ((n_layers, d), normal_init(1.0), (None, "embed")),
        "latents": ((num_latents, d), normal_init(1.0), (None, "embed")),
        "ln_q_scale": ((d,), ones, ("embed",)), "ln_q_bias": ((d,), zeros, ("embed",)),
        "ln_kv_scale": ((d,), ones, ("embed",)), "ln_kv_bias": ((d,), zeros, ("embed",)),
        "w_q": ((d, h, dh), fan_in, ("embed", "heads", "head_dim")),
        "w_k": ((d, h, dh), fan_in, ("embed", "heads", "head_dim")),
        "w_v": ((d, h, dh), fan_in, ("embed", "heads", "head_dim")),
        "w_o": ((h, dh, d), fan_in_o, ("heads", "head_dim", "embed")),
        "ln_ff_scale": ((d,), ones, ("embed",)), "ln_ff_bias": ((d,), zeros, ("embed",)),
        "ff_w1": ((d, 2 * f), lecun, ("embed", "mlp")), "ff_b1": ((2 * f,), zeros, ("mlp",)),
        "ff_w2": ((f, d), lecun, ("mlp", "embed")), "ff_b2": ((d,), zeros, ("embed",)),
    }
    self.params = nnx.Dict({name: make_param(rngs, init, shape, names)
                            for name, (shape, init, names) in shapes.items()})
    self.param_names = tuple(shapes)
    self.out_dim = d

  def __call__(self, x: Array, *, valid: Array | None = None,
               hiddens: Array | None = None) -> Array:
    if hiddens is None:
      raise ValueError("multilayer_pool needs every layer's hidden states (hiddens=)")
    # Index by name: iterating an nnx.Dict inside nnx.capture also yields its "__captures__".
    p = {k: self.params[k][...] for k in self.param_names}
    return core.multilayer_trainable_pool(hiddens, p, num_heads=self.num_heads, valid=valid,
                                          summary=self.summary, normalize=self.normalize)

