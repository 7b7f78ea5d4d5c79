"""Reading and checking the block-level keys of a model config (the builder's helpers).

Keys (``attnlab.models.default_model_config``):

* ``attention.layer_mechanisms``: one mechanism name per layer (empty = all layers use
  ``attention.mechanism``); ``attention.kwargs`` go only to layers of ``attention.mechanism``.
* ``echo.anchors`` / ``echo.sharing_layers``: layer ``sharing_layers[i]`` reuses the attention
  weights of ``anchors[i]`` (or of the single anchor) with its own values / output projection.
* ``drop_attention_layers``: layers whose attention sublayer is removed (MLP kept).
* ``router.enabled`` / ``router.layers`` (empty = all) / ``router.hidden_dim`` /
  ``router.threshold`` / ``router.train_gate`` / ``router.decode_policy`` /
  ``router.init_bias``: FiRST layer routers.
* ``norm`` = ``"layernorm_scaled"`` | ``"rmsnorm_scaled"`` | ``"layernorm_prepbn"`` (with
  ``prepbn.warmup_steps`` / ``decay_steps`` / ``momentum`` / ``eta_init``).

Every function takes a model config completed by ``attnlab.models.config.complete`` (every
key present).
"""

from __future__ import annotations

from typing import Any

from attnlab.core.variants import attention_drop, echo, interleave
from attnlab.nn.common import check_positive_int
from attnlab.nn.variants.routing import check_router_values

STANDARD, ECHO, DROPPED = "standard", "echo", "dropped"


def layer_mechanism_names(cfg: Any, *, known: list[str] | None = None) -> tuple[str, ...]:
  """The attention mechanism of every layer (``known``: valid names to check against)."""
  return interleave.layer_mechanisms(cfg.attention.mechanism, cfg.attention.layer_mechanisms,
                                     cfg.num_layers, known=known)


def layer_mechanism_kwargs(cfg: Any, layer_index: int) -> tuple[str, dict[str, Any]]:
  """``(mechanism, kwargs)`` of layer ``layer_index``: ``attention.kwargs`` belong to
  ``attention.mechanism`` only; other per-layer mechanisms use their defaults."""
  name = layer_mechanism_names(cfg)[layer_index]
  if name != cfg.attention.mechanism:
    return name, {}
  return name, dict(cfg.attention.kwargs.items())


def echo_map(cfg: Any) -> dict[int, int]:
  """``{sharing_layer: anchor}`` (empty when echo is off)."""
  return echo.echo_sources(cfg.echo.anchors, cfg.echo.sharing_layers, cfg.num_layers)


def dropped_layers(cfg: Any) -> tuple[int, ...]:
  return attention_drop.check_drop_layers(cfg.drop_attention_layers, cfg.num_layers)


def attention_kind(cfg: Any, layer_index: int) -> str:
  """``"standard"`` | ``"echo"`` (a sharing layer) | ``"dropped"`` for one layer."""
  if layer_index in dropped_layers(cfg):
    return DROPPED
  if layer_index in echo_map(cfg):
    return ECHO
  return STANDARD


def router_layers(cfg: Any) -> tuple[int, ...]:
  """Layers with a FiRST router (empty when ``router.enabled`` is False)."""
  r = cfg.router
  if not isinstance(r.enabled, bool):
    raise ValueError(f"router.enabled must be a bool, got {r.enabled!r}")
  if not r.enabled:
    return ()
  layers = tuple(r.layers)
  if not layers:
    return tuple(range(cfg.num_layers))
  for i in layers:
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < cfg.num_layers:
      raise ValueError(f"router.layers entries must be layer indices in [0, {cfg.num_layers}), "
                       f"got {layers}")
  if len(set(layers)) != len(layers):
    raise ValueError(f"router.layers has duplicates: {layers}")
  return tuple(sorted(layers))


def router_kwargs(cfg: Any) -> dict[str, Any]:
  """Keyword arguments of ``attnlab.nn.variants.LayerRouter``."""
  r = cfg.router
  return dict(hidden_dim=r.hidden_dim, threshold=r.threshold, train_gate=r.train_gate,
              decode_policy=r.decode_policy, init_bias=r.init_bias)


def norm_options(cfg: Any) -> dict[str, Any]:
  """Keyword arguments of the block norm factory (the PRepBN schedule for its norm)."""
  if cfg.norm != "layernorm_prepbn":
    return {}
  p = cfg.prepbn
  return dict(warmup_steps=p.warmup_steps, decay_steps=p.decay_steps, momentum=p.momentum,
              eta_init=p.eta_init)


def check_block_config(cfg: Any, known_mechanisms: list[str]) -> None:
  """Validate every block-level key (raises ValueError naming the key)."""
  check_positive_int(cfg.num_layers, "num_layers")
  layer_mechanism_names(cfg, known=known_mechanisms)
  drop = dropped_layers(cfg)
  sources = echo_map(cfg)
  for s, a in sources.items():
    if a in drop or s in drop:
      raise ValueError(f"echo: layer {a if a in drop else s} is in drop_attention_layers; an "
                       "anchor or sharing layer needs its attention")
  router_layers(cfg)
  r = cfg.router
  if r.enabled:
    check_positive_int(r.hidden_dim, "router.hidden_dim")
    check_router_values(r.threshold, r.train_gate, r.decode_policy, r.init_bias)
  if cfg.norm == "layernorm_prepbn":
    for key in ("warmup_steps", "decay_steps"):
      val = cfg.prepbn[key]
      if isinstance(val, bool) or not isinstance(val, int) or val < 0:
        raise ValueError(f"prepbn.{key} must be an int >= 0, got {val!r}")
    m = cfg.prepbn.momentum
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m < 1.0:
      raise ValueError(f"prepbn.momentum must be in [0, 1), got {m!r}")
