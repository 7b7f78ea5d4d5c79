"""Models built from a ``config.model`` ConfigDict: ``build_model`` and ``default_model_config``.

Config keys (``default_model_config()``; every key is read by ``build_model``):

* ``name``: "decoder_lm" (``DecoderLM``) | "encoder_classifier" (``EncoderClassifier``).
* ``num_layers``: number of transformer blocks.
* ``d_model``: residual width.
* ``num_heads``: query heads H.
* ``num_kv_heads``: key/value heads K (None = H; 1 = MQA; H % K == 0).
* ``head_dim``: per-head width (None = d_model // num_heads).
* ``mlp_dim``: MLP hidden width.
* ``mlp``: "gelu" | "swiglu" (``attnlab.nn.list_mlps()``).
* ``norm``: "layernorm" | "rmsnorm" (``attnlab.nn.list_norms()``), pre-LN.
* ``norm_eps``: epsilon of the norms.
* ``dropout``: rate on the attention and MLP outputs (and before the classifier head).
* ``position``: "rope" | "learned" | "sinusoidal" | "alibi" | "none".
* ``rope_base``: RoPE wavelength base (theta).
* ``max_len``: longest sequence (learned position table size; default KV cache length).
* ``tie_embeddings``: decoder LM head shares the token embedding.
* ``num_classes``: encoder classifier outputs.
* ``pooling``: encoder "mean" (over real tokens) | "cls" (position 0).
* ``pooling_kwargs``: options of an attention pooling head (``attnlab.models.encoder``).
* ``dtype``: compute dtype "float32" | "bfloat16" (parameters stay float32; logits float32).
* ``attention_bias``: biases on the q/k/v/o projections.
* ``attention.mechanism``: a name from ``attnlab.nn.list_attention_mechanisms()``.
* ``attention.implementation``: "auto" | "xla" | "chunked" | ... (core implementations).
* ``attention.kwargs``: mechanism hyperparameters forwarded to ``attnlab.attention`` (e.g.
  ``sigmoid_bias`` for "sigmoid"); names the mechanism does not accept raise ``ValueError``.
* ``attention.softcap``: logit soft-capping ``c * tanh(x / c)`` (None = off).
* ``attention.sliding_window``: attend to the last W positions, self included (None = off;
  for the encoder W - 1 on each side).

Block- and depth-level variants (``attnlab.nn.variants``; catalogue kind "block"):

* ``attention.layer_mechanisms``: one mechanism per layer, e.g. ``("softmax", "mixer_none")``
  (empty = every layer uses ``attention.mechanism``; ``attention.kwargs`` go only to layers of
  ``attention.mechanism``). "Deconstructing Attention", arXiv 2510.11602.
* ``echo.anchors`` / ``echo.sharing_layers``: layer ``sharing_layers[i]`` reuses the attention
  weights of ``anchors[i]`` (or of a single anchor) with its own values and output projection
  (EchoAtt, arXiv 2409.14595).
* ``drop_attention_layers``: layers whose attention sublayer is removed, MLP kept ("What
  Matters in Transformers?", arXiv 2406.15786).
* ``router``: FiRST layer routers (arXiv 2410.12513): ``enabled``, ``layers`` (empty = all),
  ``hidden_dim``, ``threshold``, ``train_gate`` ("soft" | "straight_through"),
  ``decode_policy`` ("token" | "prefill"), ``init_bias``.
* ``norm``: also "layernorm_scaled" / "rmsnorm_scaled" (1/sqrt(layer) LayerNorm Scaling, arXiv
  2502.05795) and "layernorm_prepbn" (SLAB progressive RepBN, arXiv 2405.11582) with
  ``prepbn.warmup_steps``, ``prepbn.decay_steps`` (training calls), ``prepbn.momentum``
  (running statistics), ``prepbn.eta_init``.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from flax import nnx

from attnlab.models.common import validate_model_config as _validate_common
from attnlab.models.decoder import DecoderLM
from attnlab.models.encoder import EncoderClassifier

_MODELS = {"decoder_lm": DecoderLM, "encoder_classifier": EncoderClassifier}


def default_model_config() -> ml_collections.ConfigDict:
  """A small model config with every key ``build_model`` reads (see the module docstring)."""
  placeholder = ml_collections.config_dict.placeholder
  cfg = ml_collections.ConfigDict()
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
  cfg.max_len = 512
  cfg.tie_embeddings = False
  cfg.num_classes = 2
  cfg.pooling = "mean"  # "mean" | "cls"
  cfg.pooling_kwargs = ml_collections.ConfigDict({})  # options of attention pooling heads
  cfg.dtype = "float32"  # compute dtype: "float32" | "bfloat16"; params float32
  cfg.attention_bias = False
  cfg.attention = ml_collections.ConfigDict()
  cfg.attention.mechanism = "softmax"
  cfg.attention.implementation = "auto"
  cfg.attention.kwargs = ml_collections.ConfigDict({})
  cfg.attention.softcap = placeholder(float)
  cfg.attention.sliding_window = placeholder(int)
  # Block- and depth-level variants (see the module docstring).
  cfg.attention.layer_mechanisms = ()  # one name per layer; () = all use attention.mechanism
  cfg.echo = ml_collections.ConfigDict(dict(anchors=(), sharing_layers=()))
  cfg.drop_attention_layers = ()
  cfg.router = ml_collections.ConfigDict(dict(
      enabled=False, layers=(), hidden_dim=16, threshold=0.5, train_gate="soft",
      decode_policy="token", init_bias=3.0))
  cfg.prepbn = ml_collections.ConfigDict(dict(warmup_steps=0, decay_steps=1000, momentum=0.9,
                                              eta_init=1.0))
  return cfg


def validate_model_config(cfg: Any) -> None:
  """Raise ValueError/TypeError naming the key for any bad value in a model config
  (``attnlab.models.common.validate_model_config`` plus the block-level keys)."""
  _validate_common(cfg)
  from attnlab.nn.variants import config as variants_config  # pylint: disable=g-import-not-at-top
  variants_config.check_block_config(cfg)


def list_models() -> list[str]:
  return sorted(_MODELS)


def build_model(model_cfg: ml_collections.ConfigDict, *, vocab_size: int,
                rngs: nnx.Rngs) -> nnx.Module:
  """Build the model named ``model_cfg.name``; validates the whole config first."""
  name = model_cfg.get("name") if hasattr(model_cfg, "get") else getattr(model_cfg, "name", None)
  if name not in _MODELS:
    raise ValueError(f"model name must be one of {list_models()}, got {name!r}")
  validate_model_config(model_cfg)
  return _MODELS[name](model_cfg, vocab_size=vocab_size, rngs=rngs)


def count_params(module: nnx.Module) -> int:
  """Number of scalar parameters (``nnx.Param`` leaves) in ``module``."""
  state = nnx.state(module, nnx.Param)
  return int(sum(x.size for x in jax.tree.leaves(state)))


__all__ = ["build_model", "default_model_config", "validate_model_config", "count_params",
           "list_models", "DecoderLM", "EncoderClassifier"]
