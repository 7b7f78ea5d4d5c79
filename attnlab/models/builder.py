"""The model builder: the one place that turns ``config.model`` into typed module arguments.

Every function takes a model config completed by ``attnlab.models.config.complete``. Attention
modules get ``d_model``, ``num_heads``, each of ``attnlab.nn.SHARED_ARGUMENTS`` their
constructor accepts, and ``config.model.attention.kwargs`` as keyword arguments; pooling heads
get ``d_model``, ``num_layers``, ``model_heads`` and ``config.model.pooling_kwargs``. ``check``
validates a config without building anything.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from attnlab.models import pooling as pooling_lib
from attnlab.models import variants
from attnlab.nn import attention as attention_lib
from attnlab.nn import blocks as blocks_lib
from attnlab.nn import positions as positions_lib
from attnlab.nn.common import check_positive_int, resolve_dtype
from attnlab.nn.variants import EchoAttention, LayerRouter

# Constructor arguments the class fixes itself (never taken from attention.kwargs).
_FIXED = frozenset({"self", "d_model", "num_heads", "rngs", "mechanism", "mechanism_kwargs"})
_POOL_SHARED = frozenset({"self", "d_model", "num_layers", "model_heads", "rngs"})


def shared_arguments(cfg: Any, *, layer_index: int, causal: bool) -> dict[str, Any]:
  """Values of ``attnlab.nn.SHARED_ARGUMENTS`` for one layer (param_dtype: the default)."""
  return dict(num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, position=cfg.position,
              rope_base=cfg.rope_base, rope_scaling=dict(cfg.rope_scaling) or None,
              softcap=cfg.attention.softcap,
              sliding_window=cfg.attention.sliding_window, causal=causal,
              use_bias=bool(cfg.attention_bias), dtype=cfg.dtype,
              implementation=cfg.attention.implementation, max_len=cfg.max_len,
              num_layers=cfg.num_layers, layer_index=layer_index, mlp_dim=cfg.mlp_dim)


def _hyperparameters(cls: type) -> list[str]:
  return sorted(set(attention_lib.accepted_arguments(cls)) - _FIXED
                - set(attention_lib.SHARED_ARGUMENTS))


def attention_arguments(cfg: Any, *, layer_index: int, causal: bool
                        ) -> tuple[type, dict[str, Any]]:
  """``(class, keyword arguments)`` of layer ``layer_index``'s attention module."""
  name, kwargs = variants.layer_mechanism_kwargs(cfg, layer_index)
  cls = attention_lib.get_attention_module(name)  # ValueError listing the valid names
  shared = shared_arguments(cfg, layer_index=layer_index, causal=causal)
  managed = attention_lib._MANAGED  # pylint: disable=protected-access
  for key in kwargs:
    if key in managed or key in shared:
      why = managed.get(key, f"set config.model.{key}")
      raise ValueError(f"attention.kwargs may not set {key!r}: {why}")
  if cls is attention_lib.MultiHeadAttention:
    attention_lib.check_mechanism_kwargs(name, cfg.attention.implementation, kwargs)
    accepted = attention_lib.accepted_arguments(cls)
    args = {k: v for k, v in shared.items() if k in accepted}
    return cls, dict(args, mechanism=name, mechanism_kwargs=kwargs)
  allowed = _hyperparameters(cls)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f"unknown attention.kwargs {unknown} for mechanism {name!r} "
                     f"({cls.__name__}); accepted: {allowed}")
  accepted = attention_lib.accepted_arguments(cls)
  if shared.get("rope_scaling") and "rope_scaling" not in accepted:
    raise ValueError(f"rope_scaling is set but mechanism {name!r} ({cls.__name__}) takes no "
                     "rope_scaling")
  args = {k: v for k, v in shared.items() if k in accepted}
  return cls, dict(args, **kwargs)


def attention_module(cfg: Any, *, layer_index: int, causal: bool,
                     rngs: nnx.Rngs) -> nnx.Module | None:
  """Layer ``layer_index``'s attention module (None for a dropped attention sublayer)."""
  kind = variants.attention_kind(cfg, layer_index)
  if kind == variants.DROPPED:
    return None
  if kind == variants.ECHO:
    return EchoAttention(cfg.d_model, cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                         head_dim=cfg.head_dim, use_bias=bool(cfg.attention_bias),
                         dtype=cfg.dtype, rngs=rngs)
  cls, kwargs = attention_arguments(cfg, layer_index=layer_index, causal=causal)
  return cls(cfg.d_model, cfg.num_heads, rngs=rngs, **kwargs)


def block(cfg: Any, *, layer_index: int, causal: bool,
          rngs: nnx.Rngs) -> blocks_lib.TransformerBlock:
  """Transformer block ``layer_index`` (attention, norms, MLP, optional FiRST router)."""
  attention = attention_module(cfg, layer_index=layer_index, causal=causal, rngs=rngs)
  router = (LayerRouter(cfg.d_model, **variants.router_kwargs(cfg), rngs=rngs)
            if layer_index in variants.router_layers(cfg) else None)
  return blocks_lib.TransformerBlock(
      cfg.d_model, cfg.mlp_dim, attention, norm=cfg.norm, mlp=cfg.mlp, dropout=cfg.dropout,
      norm_eps=cfg.norm_eps, dtype=cfg.dtype, layer_index=layer_index,
      norm_options=variants.norm_options(cfg), router=router, rngs=rngs)


def stack(cfg: Any, *, causal: bool, rngs: nnx.Rngs) -> blocks_lib.TransformerStack:
  """Every block of the model, with EchoAtt routing."""
  blocks = [block(cfg, layer_index=i, causal=causal, rngs=rngs) for i in range(cfg.num_layers)]
  return blocks_lib.TransformerStack(blocks, num_heads=cfg.num_heads,
                                     echo_sources=variants.echo_map(cfg))


def final_norm(cfg: Any, rngs: nnx.Rngs) -> nnx.Module:
  """The norm after the last block (layer-aware norms fall back to their plain form)."""
  return blocks_lib.make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps,
                              dtype=resolve_dtype(cfg.dtype), rngs=rngs, layer_index=None)


def pooling_arguments(cfg: Any) -> tuple[type | None, dict[str, Any]]:
  """``(head class or None for "mean"/"cls", keyword arguments)`` of the pooling head."""
  name, kwargs = cfg.pooling, dict(cfg.pooling_kwargs.items())
  if name in pooling_lib.BUILTIN_POOLINGS:
    if kwargs:
      raise ValueError(f"pooling_kwargs are only for attention pooling heads; pooling={name!r} "
                       f"takes none, got {kwargs}")
    return None, {}
  if name not in pooling_lib.POOLINGS:
    raise ValueError(f"pooling must be one of {pooling_lib.list_poolings()}, got {name!r}")
  cls = pooling_lib.POOLINGS[name]
  allowed = sorted(set(attention_lib.accepted_arguments(cls)) - _POOL_SHARED)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f"unknown pooling_kwargs {unknown} for pooling {name!r}; accepted: "
                     f"{allowed}")
  return cls, dict(kwargs, num_layers=cfg.num_layers, model_heads=cfg.num_heads)


def pooling_head(cfg: Any, rngs: nnx.Rngs) -> nnx.Module | None:
  cls, kwargs = pooling_arguments(cfg)
  return None if cls is None else cls(cfg.d_model, rngs=rngs, **kwargs)


def check(cfg: Any) -> None:
  """Validate a completed model config (raises ValueError/TypeError naming the key)."""
  from attnlab.models.config import MODEL_NAMES  # pylint: disable=g-import-not-at-top
  if cfg.name not in MODEL_NAMES:
    raise ValueError(f"model name must be one of {list(MODEL_NAMES)}, got {cfg.name!r}")
  for key in ("num_layers", "d_model", "num_heads", "mlp_dim", "max_len"):
    check_positive_int(cfg[key], key)
  num_heads, num_kv_heads, head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  check_positive_int(num_kv_heads, "num_kv_heads", allow_none=True)
  if num_kv_heads is not None and num_heads % num_kv_heads:
    raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                     f"({num_kv_heads})")
  check_positive_int(head_dim, "head_dim", allow_none=True)
  if head_dim is None and cfg.d_model % num_heads:
    raise ValueError(f"d_model ({cfg.d_model}) must be divisible by num_heads ({num_heads}) "
                     "when head_dim is None")
  head_dim = head_dim or cfg.d_model // num_heads
  position = positions_lib.check_position_kind(cfg.position)
  if position == "rope" and head_dim % 2:
    raise ValueError(f"position='rope' needs an even head_dim, got {head_dim}")
  if positions_lib.rope_scaling(dict(cfg.rope_scaling) or None) is not None and (
      position != "rope"):  # ValueError naming the key above
    raise ValueError(f"rope_scaling is set but position is {position!r}; it applies to "
                     "position='rope' only")
  if position == "sinusoidal" and cfg.d_model % 2:
    raise ValueError(f"position='sinusoidal' needs an even d_model, got {cfg.d_model}")
  if cfg.mlp not in blocks_lib.list_mlps():
    raise ValueError(f"mlp must be one of {blocks_lib.list_mlps()}, got {cfg.mlp!r}")
  if cfg.norm not in blocks_lib.list_norms():
    raise ValueError(f"norm must be one of {blocks_lib.list_norms()}, got {cfg.norm!r}")
  dropout = cfg.dropout
  if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not (
      0.0 <= dropout < 1.0):
    raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
  resolve_dtype(cfg.dtype)
  softcap = cfg.attention.softcap
  if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, (int, float))
                              or softcap <= 0):
    raise ValueError(f"attention.softcap must be a positive number or None, got {softcap!r}")
  check_positive_int(cfg.attention.sliding_window, "attention.sliding_window", allow_none=True)
  if not isinstance(cfg.attention.implementation, str):
    raise ValueError(f"attention.implementation must be a string, got "
                     f"{cfg.attention.implementation!r}")
  variants.check_block_config(cfg, attention_lib.list_attention_mechanisms())
  seen = set()
  for i, name in enumerate(variants.layer_mechanism_names(cfg)):
    if name in seen:
      continue
    seen.add(name)
    try:
      attention_arguments(cfg, layer_index=i, causal=cfg.name == "decoder_lm")
    except (ValueError, TypeError) as e:
      where = ("attention.mechanism" if name == cfg.attention.mechanism
               else f"attention.layer_mechanisms[{i}]")
      raise type(e)(f"{where}={name!r}: {e}") from None
  if cfg.name == "encoder_classifier":
    check_positive_int(cfg.num_classes, "num_classes")
  pooling_arguments(cfg)
