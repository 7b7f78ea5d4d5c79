"""The model config: its defaults, completion and the one validation pass.

``config.model`` is an ml-collections ``ConfigDict`` (see ``default_model_config`` and the
package docstring for every key). ``attnlab.models`` is the only package that reads it: the
builder (``attnlab.models.builder``) turns it into the typed keyword arguments of the NNX
modules. ``validate_model_config`` checks it once (unknown keys, types, names, the mechanism's
and pooling head's keyword arguments against their constructors' signatures); the modules'
constructors check the values of their own arguments when the model is built.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import ml_collections

ConfigDict = ml_collections.ConfigDict

# Sub-dicts whose keys are free: keyword arguments of the chosen module, or (rope_scaling)
# Hugging Face's rope_scaling dict, checked by attnlab.nn.positions.rope_scaling.
FREE_KEYS = ("kwargs", "pooling_kwargs", "rope_scaling")
MODEL_NAMES = ("decoder_lm", "encoder_classifier")


def default_model_config() -> ConfigDict:
  """A small model config with every key ``build_model`` reads (see ``attnlab.models``)."""
  placeholder = ml_collections.config_dict.placeholder
  cfg = ConfigDict()
  cfg.name = "decoder_lm"  # "decoder_lm" | "encoder_classifier"
  cfg.num_layers = 4
  cfg.d_model = 256
  cfg.num_heads = 4
  cfg.num_kv_heads = placeholder(int)  # None = num_heads (MHA); 1 = MQA
  cfg.head_dim = placeholder(int)  # None = d_model // num_heads
  cfg.mlp_dim = 1024
  cfg.mlp = "gelu"  # "gelu" | "swiglu"
  cfg.norm = "layernorm"  # "layernorm" | "rmsnorm"
  cfg.norm_eps = 1e-6
  cfg.dropout = 0.0
  cfg.position = "rope"  # "rope" | "learned" | "sinusoidal" | "alibi" | "none"
  cfg.rope_base = 10000.0
  cfg.rope_scaling = ConfigDict({})  # {} = none; else HF's rope_scaling (linear/llama3/yarn)
  cfg.max_len = 512
  cfg.tie_embeddings = False
  cfg.num_classes = 2
  cfg.pooling = "mean"  # "mean" | "cls" | a registered attention pooling head
  cfg.pooling_kwargs = ConfigDict({})  # keyword arguments of an attention pooling head
  cfg.dtype = "float32"  # compute dtype: "float32" | "bfloat16"; params float32
  cfg.attention_bias = False
  cfg.attention = ConfigDict()
  cfg.attention.mechanism = "softmax"
  cfg.attention.implementation = "auto"
  cfg.attention.kwargs = ConfigDict({})  # keyword arguments of the mechanism / its module
  cfg.attention.softcap = placeholder(float)
  cfg.attention.sliding_window = placeholder(int)
  # Block- and depth-level variants (typed fields read by the builder; see the docstring).
  cfg.attention.layer_mechanisms = ()  # one name per layer; () = all use attention.mechanism
  cfg.echo = ConfigDict(dict(anchors=(), sharing_layers=()))
  cfg.drop_attention_layers = ()
  cfg.router = ConfigDict(dict(
      enabled=False, layers=(), hidden_dim=16, threshold=0.5, train_gate="soft",
      decode_policy="token", init_bias=3.0))
  cfg.prepbn = ConfigDict(dict(warmup_steps=0, decay_steps=1000, momentum=0.9, eta_init=1.0))
  return cfg


def _as_dict(x: Any) -> dict[str, Any]:
  if isinstance(x, ConfigDict):
    return x.to_dict()
  if isinstance(x, Mapping):
    return {k: _as_dict(v) if isinstance(v, (Mapping, ConfigDict)) else v for k, v in x.items()}
  raise TypeError(f"the model config must be a ConfigDict or a mapping, got {type(x).__name__}")


def _merge(defaults: dict[str, Any], got: dict[str, Any], prefix: str) -> dict[str, Any]:
  unknown = sorted(set(got) - set(defaults))
  if unknown:
    raise ValueError(f"unknown model config key(s) {[prefix + k for k in unknown]}; valid "
                     f"keys under {prefix.rstrip('.') or 'model'}: {sorted(defaults)}")
  out = dict(defaults)
  for k, v in got.items():
    if k in FREE_KEYS:
      out[k] = dict(v or {})
    elif isinstance(defaults[k], dict):
      if not isinstance(v, dict):
        raise ValueError(f"model config key {prefix + k!r} must be a mapping, got {v!r}")
      out[k] = _merge(defaults[k], v, f"{prefix}{k}.")
    else:
      out[k] = v
  return out


def complete(cfg: Any) -> ConfigDict:
  """``cfg`` (a ConfigDict or a mapping, possibly partial) with every missing key at its
  default; raises ``ValueError`` naming unknown keys. Returns a new unlocked ConfigDict."""
  return ConfigDict(copy.deepcopy(_merge(_as_dict(default_model_config()), _as_dict(cfg), "")))


def validate_model_config(cfg: Any) -> None:
  """Check ``cfg`` once: keys, names, types and the mechanism's / pooling head's keyword
  arguments. Raises ``ValueError`` / ``TypeError`` naming the key (without building anything).
  """
  from attnlab.models import builder  # pylint: disable=g-import-not-at-top
  builder.check(complete(cfg))
