"""Models built from a ``config.model`` ConfigDict: ``build_model`` and ``default_model_config``.

This package is the only one that reads ``config.model``: ``attnlab.models.builder`` turns it
into the typed keyword arguments of the ``attnlab.nn`` modules, and ``validate_model_config``
checks it once (``attnlab.models.config``).

Config keys (``default_model_config()``; every key is read by ``build_model``):

* ``name``: "decoder_lm" (``DecoderLM``) | "encoder_classifier" (``EncoderClassifier``).
* ``num_layers``: number of transformer blocks.
* ``d_model``: residual width.
* ``num_heads``: query heads H.
* ``num_kv_heads``: key/value heads K (None = H; 1 = MQA; H % K == 0).
* ``head_dim``: per-head width (None = d_model // num_heads).
* ``mlp_dim``: MLP hidden width.
* ``mlp``: "gelu" | "swiglu" | "gelu_bias" (GPT-2's, with biases) (``attnlab.nn.list_mlps()``).
* ``norm``: "layernorm" | "rmsnorm" (``attnlab.nn.list_norms()``), pre-LN.
* ``norm_eps``: epsilon of the norms.
* ``dropout``: rate on the attention and MLP outputs (and before the classifier head).
* ``position``: "rope" | "learned" | "sinusoidal" | "alibi" | "none".
* ``rope_base``: RoPE wavelength base (theta).
* ``rope_scaling``: ``{}`` (none) or Hugging Face's ``rope_scaling`` dict: linear, llama3, yarn.
* ``max_len``: longest sequence (learned position table size; default KV cache length).
* ``tie_embeddings``: decoder LM head shares the token embedding.
* ``num_classes``: encoder classifier outputs.
* ``pooling``: encoder "mean" (over real tokens) | "cls" (position 0) | an attention pooling
  head of ``attnlab.models.pooling`` (``list_poolings()``).
* ``pooling_kwargs``: keyword arguments of that pooling head.
* ``dtype``: compute dtype "float32" | "bfloat16" (parameters stay float32; logits float32).
* ``attention_bias``: biases on the q/k/v/o projections.
* ``attention.mechanism``: a name from ``attnlab.nn.list_attention_mechanisms()``.
* ``attention.implementation``: "auto" | "xla" | "chunked" | ... (core implementations).
* ``attention.kwargs``: the mechanism's hyperparameters: keyword arguments of its NNX module
  (e.g. ``max_distance`` of ``DebertaAttention``), or of its pure function for mechanisms run
  by a plain ``MultiHeadAttention`` (e.g. ``sigmoid_bias``); unknown names raise
  ``ValueError`` listing the accepted ones.
* ``attention.softcap``: logit soft-capping ``c * tanh(x / c)`` (None = off).
* ``attention.sliding_window``: attend to the last W positions, self included (None = off;
  for the encoder W - 1 on each side).

Block- and depth-level variants (typed fields read by the builder, which hands typed arguments
to ``attnlab.nn.variants`` and the stack; catalogue kind "block"):

* ``attention.layer_mechanisms``: one mechanism per layer, e.g. ``(softmax, mixer_none)``
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

Pretrained checkpoints: ``from_pretrained(path, dtype=, mesh=)`` / ``save_pretrained`` /
``load_tokenizer`` read and write Hugging Face folders (gpt2, llama, mistral, qwen2;
``attnlab.models.pretrained``).
"""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx

import attnlab.nn  # noqa: F401  (registers every attention module and block variant)
from attnlab.models import builder
from attnlab.models.config import complete, default_model_config, validate_model_config
from attnlab.models.decoder import DecoderLM
from attnlab.models.encoder import EncoderClassifier
from attnlab.models.generate import generate
from attnlab.models.pooling import list_poolings, register_pooling
from attnlab.models.pretrained import from_pretrained, load_tokenizer, save_pretrained
from attnlab.models.wide_deep import wide_deep_configs

_MODELS = {"decoder_lm": DecoderLM, "encoder_classifier": EncoderClassifier}


def list_models() -> list[str]:
  return sorted(_MODELS)


def build_model(model_cfg: ml_collections.ConfigDict, *, vocab_size: int,
                rngs: nnx.Rngs) -> nnx.Module:
  """Build the model named ``model_cfg.name`` (the model checks its config first)."""
  cfg = complete(model_cfg)
  if cfg.name not in _MODELS:
    raise ValueError(f"model name must be one of {list_models()}, got {cfg.name!r}")
  return _MODELS[cfg.name](cfg, vocab_size=vocab_size, rngs=rngs)


def count_params(module: nnx.Module) -> int:
  """Number of scalar parameters (``nnx.Param`` leaves) in ``module``."""
  state = nnx.state(module, nnx.Param)
  return int(sum(x.size for x in jax.tree.leaves(state)))


__all__ = ["build_model", "default_model_config", "validate_model_config", "count_params",
           "list_models", "DecoderLM", "EncoderClassifier", "builder", "complete",
           "list_poolings", "register_pooling", "wide_deep_configs", "generate",
           "from_pretrained", "save_pretrained", "load_tokenizer"]
