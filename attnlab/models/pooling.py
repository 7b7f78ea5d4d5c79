"""Attention pooling heads for ``EncoderClassifier`` (``config.model.pooling``), ending in
``attnlab.core.mechanisms_mixers.lowrank_multihead_pool`` / ``multilayer_trainable_pool``.

A pooling head is built by ``cls(cfg, rngs=rngs)`` from the model config; its hyperparameters
come from ``config.model.pooling_kwargs``. It provides ``out_dim`` (the pooled width the
classifier reads), ``all_layers`` (True: the encoder passes every layer's hidden states) and
``__call__(x [B, T, D], *, valid [B, T] | None, hiddens [L, B, T, D] | None) -> [B, out_dim]``.

* ``LowRankMHAPool`` ("lowrank_mha_pool", LAMA, arXiv 1912.00835). Options: ``num_heads``
  (int > 0, 4), ``rank`` (int > 0, 1), ``context`` ("learned" | "mean"), ``l2_normalize``
  (bool, True). ``out_dim = num_heads * d_model`` (the heads' pooled vectors concatenated).
* ``MultiLayerPool`` ("multilayer_pool", Multi-Layers Trainable Pooling, arXiv 2409.02727).
  Options: ``num_latents`` (int > 0, 16), ``num_heads`` (int >= 0, 0 = the model's),
  ``head_dim`` (int >= 0, 0 = d_model // num_heads), ``ff_mult`` (int > 0, 4), ``summary``
  ("mean" | "last"), ``normalize`` (bool, True). ``out_dim = d_model``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
from flax import nnx

from attnlab.core.mechanisms_mixers import pooling as core
from attnlab.nn.common import cfg_get, freeze
from attnlab.nn.mechanisms_mixers._base import (lecun, make_param, normal_init, ones,
                                                parse_options, zeros)

Array = jax.Array


class PoolingHead(nnx.Module):
  """Base: option parsing from ``config.model.pooling_kwargs``."""

  option_spec: ClassVar[dict[str, tuple[Any, Any]]] = {}
  all_layers: ClassVar[bool] = False

  @classmethod
  def parse(cls, cfg: Any) -> dict[str, Any]:
    name = cfg_get(cfg, "pooling", cls.__name__)
    return parse_options(cfg_get(cfg, "pooling_kwargs", {}), cls.option_spec, name,
                         "pooling kwargs")

  @classmethod
  def check_config(cls, cfg: Any) -> None:
    cls.parse(cfg)

  def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
    self.options = freeze(self.parse(cfg))
    self.d_model = cfg.d_model
    self.build(cfg, rngs)

  def opt(self, name: str) -> Any:
    return dict(self.options)[name]

  def build(self, cfg: Any, rngs: nnx.Rngs) -> None:
    raise NotImplementedError


class LowRankMHAPool(PoolingHead):
  option_spec = {"num_heads": ("int>0", 4), "rank": ("int>0", 1),
                 "context": (core.CONTEXTS, "learned"), "l2_normalize": ("bool", True)}

  def build(self, cfg: Any, rngs: nnx.Rngs) -> None:
    d, m, r = self.d_model, self.opt("num_heads"), self.opt("rank")
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0,
                                             out_axis=(1, 2))
    self.p = make_param(rngs, init, (d, m, r), ("embed", None, None))
    self.q = make_param(rngs, init, (d, m, r), ("embed", None, None))
    self.context = nnx.data(None)
    if self.opt("context") == "learned":
      self.context = make_param(rngs, normal_init(1.0 / math.sqrt(d)), (d,), ("embed",))
    self.out_dim = m * d

  def __call__(self, x: Array, *, valid: Array | None = None,
               hiddens: Array | None = None, return_weights: bool = False) -> Any:
    del hiddens
    c = None if self.context is None else self.context[...]
    pooled, weights = core.lowrank_multihead_pool(
        x, self.p[...], self.q[...], context=c, valid=valid,
        l2_normalize=self.opt("l2_normalize"))
    return (pooled, weights) if return_weights else pooled


class MultiLayerPool(PoolingHead):
  option_spec = {"num_latents": ("int>0", 16), "num_heads": ("int>=0", 0),
                 "head_dim": ("int>=0", 0), "ff_mult": ("int>0", 4),
                 "summary": (core.SUMMARIES, "mean"), "normalize": ("bool", True)}
  all_layers = True

  def build(self, cfg: Any, rngs: nnx.Rngs) -> None:
    d, n_layers = self.d_model, cfg.num_layers
    h = self.opt("num_heads") or cfg.num_heads
    dh = self.opt("head_dim") or max(1, d // h)
    f = self.opt("ff_mult") * d
    self.num_heads = h
    fan_in = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0,
                                               out_axis=(1, 2))
    fan_in_o = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                 in_axis=(0, 1), out_axis=2)
    shapes = {
        "layer_emb": ((n_layers, d), normal_init(1.0), (None, "embed")),
        "latents": ((self.opt("num_latents"), d), normal_init(1.0), (None, "embed")),
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
                                          summary=self.opt("summary"),
                                          normalize=self.opt("normalize"))


POOLINGS = {"lowrank_mha_pool": LowRankMHAPool, "multilayer_pool": MultiLayerPool}
