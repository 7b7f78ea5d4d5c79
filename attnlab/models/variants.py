"""Reading and validating the block-level keys of a model config.

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
"""

from __future__ import annotations

import copy
from typing import Any

from attnlab.core.mechanisms_blocks import attention_drop, echo, interleave
from attnlab.nn.common import cfg_get, check_positive_int
from attnlab.nn.variants.routing import check_router_values

STANDARD, ECHO, DROPPED = "standard", "echo", "dropped"


def _att(cfg: Any) -> Any:
  return cfg_get(cfg, "attention", {})


def layer_mechanism_names(cfg: Any, *, check_names: bool = False) -> tuple[str, ...]:
  """The attention mechanism of every layer."""
  known = None
  if check_names:
    from attnlab.nn.attention import list_attention_mechanisms  # pylint: disable=g-import-not-at-top
    known = list_attention_mechanisms()
  return interleave.layer_mechanisms(cfg_get(_att(cfg), "mechanism", "softmax"),
                                     cfg_get(_att(cfg), "layer_mechanisms", ()), cfg.num_layers,
                                     known=known)


def layer_attention_config(cfg: Any, layer_index: int) -> Any:
  """``cfg`` with ``attention.mechanism`` set to layer ``layer_index``'s mechanism.

  Returns ``cfg`` itself when that is already the mechanism; otherwise a copy whose
  ``attention.kwargs`` is empty (the kwargs belong to ``attention.mechanism``).
  """
  per_layer = cfg_get(_att(cfg), "layer_mechanisms", ())
  main = cfg_get(_att(cfg), "mechanism", "softmax")
  if not per_layer:
    return cfg
  name = layer_mechanism_names(cfg)[layer_index]
  if name == main:
    return cfg
  out = copy.deepcopy(cfg)
  att = out["attention"] if hasattr(out, "__getitem__") else out.attention
  with att.unlocked() if hasattr(att, "unlocked") else _Null():
    att["mechanism"] = name
    att["kwargs"] = type(att["kwargs"])({}) if att.get("kwargs") is not None else {}
  return out


class _Null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def echo_map(cfg: Any) -> dict[int, int]:
  """``{sharing_layer: anchor}`` (empty when echo is off)."""
  e = cfg_get(cfg, "echo", {})
  return echo.echo_sources(cfg_get(e, "anchors", ()), cfg_get(e, "sharing_layers", ()),
                           cfg.num_layers)


def dropped_layers(cfg: Any) -> tuple[int, ...]:
  return attention_drop.check_drop_layers(cfg_get(cfg, "drop_attention_layers", ()),
                                          cfg.num_layers)


def attention_kind(cfg: Any, layer_index: int) -> str:
  """``"standard"`` | ``"echo"`` (a sharing layer) | ``"dropped"`` for one layer."""
  if layer_index in dropped_layers(cfg):
    return DROPPED
  if layer_index in echo_map(cfg):
    return ECHO
  return STANDARD


def router_layers(cfg: Any) -> tuple[int, ...]:
  """Layers with a FiRST router (empty when ``router.enabled`` is False)."""
  r = cfg_get(cfg, "router", {})
  enabled = cfg_get(r, "enabled", False)
  if not isinstance(enabled, bool):
    raise ValueError(f"router.enabled must be a bool, got {enabled!r}")
  if not enabled:
    return ()
  layers = tuple(cfg_get(r, "layers", ()))
  if not layers:
    return tuple(range(cfg.num_layers))
  for i in layers:
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < cfg.num_layers:
      raise ValueError(f"router.layers entries must be layer indices in [0, {cfg.num_layers}), "
                       f"got {layers}")
  if len(set(layers)) != len(layers):
    raise ValueError(f"router.layers has duplicates: {layers}")
  return tuple(sorted(layers))


def check_block_config(cfg: Any) -> None:
  """Validate every block-level key (raises ValueError naming the key)."""
  check_positive_int(cfg_get(cfg, "num_layers"), "num_layers")
  names = layer_mechanism_names(cfg, check_names=True)
  main = cfg_get(_att(cfg), "mechanism", "softmax")
  if cfg_get(_att(cfg), "layer_mechanisms", ()):
    from attnlab.nn.attention import check_attention_config  # pylint: disable=g-import-not-at-top
    for i, name in enumerate(names):
      if name != main and name not in names[:i]:
        try:
          check_attention_config(layer_attention_config(cfg, i))
        except ValueError as e:
          raise ValueError(f"attention.layer_mechanisms[{i}]={name!r}: {e}") from None
  drop = dropped_layers(cfg)
  sources = echo_map(cfg)
  for s, a in sources.items():
    if a in drop or s in drop:
      raise ValueError(f"echo: layer {a if a in drop else s} is in drop_attention_layers; an "
                       "anchor or sharing layer needs its attention")
  router_layers(cfg)
  r = cfg_get(cfg, "router", {})
  if cfg_get(r, "enabled", False):
    check_positive_int(cfg_get(r, "hidden_dim", 16), "router.hidden_dim")
    check_router_values(cfg_get(r, "threshold", 0.5), cfg_get(r, "train_gate", "soft"),
                        cfg_get(r, "decode_policy", "token"), cfg_get(r, "init_bias", 3.0))
  if cfg_get(cfg, "norm", "layernorm") == "layernorm_prepbn":
    p = cfg_get(cfg, "prepbn", {})
    for key in ("warmup_steps", "decay_steps"):
      val = cfg_get(p, key, 0)
      if isinstance(val, bool) or not isinstance(val, int) or val < 0:
        raise ValueError(f"prepbn.{key} must be an int >= 0, got {val!r}")
    m = cfg_get(p, "momentum", 0.9)
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m < 1.0:
      raise ValueError(f"prepbn.momentum must be in [0, 1), got {m!r}")
