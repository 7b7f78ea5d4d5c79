"""Hugging Face ``config.json`` <-> attnlab model config, per ``model_type``.

Supported: ``gpt2`` (learned positions, LayerNorm, GELU-tanh MLP with biases, q/k/v/o biases,
tied embeddings) and the LLaMA family ``llama``, ``mistral``, ``qwen2`` (RoPE with theta,
RMSNorm, SwiGLU, GQA, optional tied embeddings; qwen2 has q/k/v biases and no o bias, mistral
an optional sliding window; RoPE scaling "linear", "llama3" and "yarn"). Anything the attnlab
model cannot reproduce ("dynamic" / "longrope" RoPE scaling, partial rotary factors, MLP
biases in the LLaMA family, other activations, layer-dependent sliding windows) is refused
with a ``ValueError`` naming the config key.
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from attnlab.models import config as config_lib
from attnlab.nn import positions as positions_lib

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")
LLAMA_FAMILY = ("llama", "mistral", "qwen2")
# gpt2's "gelu_new" / "gelu_pytorch_tanh" are the tanh approximation (jax.nn.gelu's default).
_GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def model_type_of(hf: Mapping[str, Any]) -> str:
  """``hf["model_type"]``, checked against ``SUPPORTED_MODEL_TYPES``."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"unsupported model_type {model_type!r} in config.json; supported: "
                     f"{list(SUPPORTED_MODEL_TYPES)}")
  return model_type


def _rope(hf: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
  """``(theta, rope_scaling)`` from ``rope_theta`` + ``rope_scaling`` (transformers 4) or
  ``rope_parameters`` (transformers 5). ``rope_scaling`` is ``{}`` (unscaled) or a checked
  linear / llama3 / yarn dict (``attnlab.nn.positions.rope_scaling``), with transformers'
  defaults filled in: ``original_max_position_embeddings`` from the top level or
  ``max_position_embeddings``; yarn's missing ``factor`` = max / original positions."""
  params = dict(hf.get("rope_parameters") or {})
  scaling = dict(hf.get("rope_scaling") or {})
  theta = float(params.get("rope_theta", scaling.get("rope_theta",
                                                     hf.get("rope_theta", 10000.0))))
  spec = scaling or params
  kind = spec.get("rope_type", spec.get("type", "default"))
  prf = spec.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  if prf not in (None, 1, 1.0):
    raise ValueError(f"partial_rotary_factor {prf!r} (config.json) is not supported: attnlab's "
                     "RoPE rotates the whole head dim")
  if kind in (None, "default"):
    return theta, {}
  if kind not in positions_lib.ROPE_SCALING_TYPES:
    raise ValueError(f"rope scaling {kind!r} (config.json rope_scaling/rope_parameters) is not "
                     f"supported by attnlab's RoPE; supported: "
                     f"{['default', *positions_lib.ROPE_SCALING_TYPES]}")
  spec = {k: v for k, v in spec.items() if k not in ("rope_theta", "type")}
  spec["rope_type"] = kind
  if kind in ("llama3", "yarn") and spec.get("original_max_position_embeddings") is None:
    spec["original_max_position_embeddings"] = hf.get(
        "original_max_position_embeddings", hf.get("max_position_embeddings"))
  if kind == "yarn" and spec.get("factor") is None:
    spec["factor"] = (float(hf["max_position_embeddings"])
                      / float(spec["original_max_position_embeddings"]))
  try:
    checked = positions_lib.rope_scaling(spec)
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.json rope scaling {spec}: {e}") from e
  return theta, checked.as_dict()


def _require(hf: Mapping[str, Any], key: str, allowed: tuple[Any, ...], default: Any) -> None:
  value = hf.get(key, default)
  if value not in allowed:
    raise ValueError(f"config.json {key}={value!r} is not supported; supported: {list(allowed)}")


def to_model_config(hf: Mapping[str, Any], *, dtype: str = "float32",
                    implementation: str = "auto") -> tuple[ml_collections.ConfigDict, int]:
  """``(attnlab model config, vocab_size)`` for an HF config dict."""
  model_type = model_type_of(hf)
  cfg = config_lib.default_model_config()
  cfg.dtype = dtype
  cfg.attention.implementation = implementation
  if model_type == "gpt2":
    _require(hf, "activation_function", _GPT2_ACTIVATIONS, "gelu_new")
    _require(hf, "scale_attn_by_inverse_layer_idx", (False,), False)
    _require(hf, "reorder_and_upcast_attn", (False,), False)
    _require(hf, "scale_attn_weights", (True,), True)
    d = int(hf["n_embd"])
    cfg.update(dict(num_layers=int(hf["n_layer"]), d_model=d, num_heads=int(hf["n_head"]),
                    mlp_dim=int(hf.get("n_inner") or 4 * d), mlp="gelu_bias",
                    norm="layernorm", norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                    position="learned", max_len=int(hf.get("n_positions", 1024)),
                    tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                    attention_bias=True))
    return cfg, int(hf["vocab_size"])
  _require(hf, "hidden_act", ("silu",), "silu")
  _require(hf, "mlp_bias", (False,), False)
  heads = int(hf["num_attention_heads"])
  d = int(hf["hidden_size"])
  head_dim = hf.get("head_dim") or d // heads
  kv = hf.get("num_key_value_heads") or heads
  window = None
  if model_type == "mistral":
    window = hf.get("sliding_window")
  elif model_type == "qwen2" and hf.get("use_sliding_window", False):
    raise ValueError("config.json use_sliding_window=True (qwen2's per-layer windows) is not "
                     "supported; supported: False")
  if model_type == "qwen2":
    bias = True  # q/k/v biases; the o projection has none (loaded as zeros)
  else:
    bias = bool(hf.get("attention_bias", False))
  theta, scaling = _rope(hf)
  cfg.update(dict(num_layers=int(hf["num_hidden_layers"]), d_model=d, num_heads=heads,
                  num_kv_heads=int(kv), head_dim=int(head_dim),
                  mlp_dim=int(hf["intermediate_size"]), mlp="swiglu", norm="rmsnorm",
                  norm_eps=float(hf.get("rms_norm_eps", 1e-6)), position="rope",
                  rope_base=theta, max_len=int(hf.get("max_position_embeddings", 2048)),
                  tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                  attention_bias=bias))
  cfg.rope_scaling = ml_collections.ConfigDict(scaling)
  cfg.attention.sliding_window = None if window is None else int(window)
  return cfg, int(hf["vocab_size"])


def from_model(model: Any, model_type: str) -> dict[str, Any]:
  """An HF config dict describing an attnlab ``DecoderLM`` (for ``save_pretrained`` of a model
  not loaded from a checkpoint). The model must have the architecture of ``model_type``."""
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"unsupported model_type {model_type!r}; supported: "
                     f"{list(SUPPORTED_MODEL_TYPES)}")
  block = model.stack.blocks[0]
  attn = block.attention
  mlp_dim = block.mlp.wo.kernel.shape[0]
  eps = float(block.norm2.epsilon)
  common = dict(model_type=model_type, vocab_size=int(model.vocab_size),
                tie_word_embeddings=bool(model.tie_embeddings))
  if model_type == "gpt2":
    return dict(common, architectures=["GPT2LMHeadModel"], n_embd=attn.d_model,
                n_layer=model.num_layers, n_head=attn.num_heads, n_inner=mlp_dim,
                n_positions=model.max_len, layer_norm_epsilon=eps,
                activation_function="gelu_new", bos_token_id=0, eos_token_id=0)
  arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
          "qwen2": "Qwen2ForCausalLM"}[model_type]
  out = dict(common, architectures=[arch], hidden_size=attn.d_model,
             intermediate_size=mlp_dim, num_hidden_layers=model.num_layers,
             num_attention_heads=attn.num_heads, num_key_value_heads=attn.num_kv_heads,
             head_dim=attn.head_dim, rms_norm_eps=eps, rope_theta=attn.rope_base,
             max_position_embeddings=model.max_len, hidden_act="silu")
  if attn.rope_scaling is not None:
    out["rope_scaling"] = attn.rope_scaling.as_dict()
  if model_type == "llama":
    out["attention_bias"] = attn.q.bias is not None
  if model_type == "mistral":
    out["sliding_window"] = attn.sliding_window
  if model_type == "qwen2":
    out["use_sliding_window"] = False
  return out
