"""Pieces shared by the decoder and encoder models: embeddings and config checks."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.nn import positions as positions_lib
from attnlab.nn.attention import check_attention_config
from attnlab.nn.blocks import list_mlps, list_norms
from attnlab.nn.common import cfg_get, check_positive_int, resolve_dtype
from attnlab.nn.partitioning import logical_init

Array = jax.Array

POOLINGS = ("mean", "cls")


def check_tokens(tokens: Any, name: str = "tokens") -> Array:
  tokens = jnp.asarray(tokens)
  if tokens.ndim != 2:
    raise ValueError(f"{name} must have shape [batch, length], got {tokens.shape}")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise TypeError(f"{name} must be an integer array, got dtype {tokens.dtype}")
  return tokens


def validate_model_config(cfg: Any) -> None:
  """Raise ValueError/TypeError naming the key for any bad value in a model config."""
  for key in ("num_layers", "d_model", "num_heads", "mlp_dim", "max_len"):
    check_positive_int(cfg_get(cfg, key), key)
  num_heads = cfg.num_heads
  num_kv_heads = cfg_get(cfg, "num_kv_heads")
  check_positive_int(num_kv_heads, "num_kv_heads", allow_none=True)
  if num_kv_heads is not None and num_heads % num_kv_heads:
    raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                     f"({num_kv_heads})")
  head_dim = cfg_get(cfg, "head_dim")
  check_positive_int(head_dim, "head_dim", allow_none=True)
  if head_dim is None and cfg.d_model % num_heads:
    raise ValueError(f"d_model ({cfg.d_model}) must be divisible by num_heads ({num_heads}) "
                     "when head_dim is None")
  head_dim = head_dim or cfg.d_model // num_heads
  position = positions_lib.check_position_kind(cfg_get(cfg, "position", "none"))
  if position == "rope" and head_dim % 2:
    raise ValueError(f"position='rope' needs an even head_dim, got {head_dim}")
  if position == "sinusoidal" and cfg.d_model % 2:
    raise ValueError(f"position='sinusoidal' needs an even d_model, got {cfg.d_model}")
  if cfg_get(cfg, "mlp", "gelu") not in list_mlps():
    raise ValueError(f"mlp must be one of {list_mlps()}, got {cfg_get(cfg, 'mlp')!r}")
  if cfg_get(cfg, "norm", "layernorm") not in list_norms():
    raise ValueError(f"norm must be one of {list_norms()}, got {cfg_get(cfg, 'norm')!r}")
  dropout = cfg_get(cfg, "dropout", 0.0)
  if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
    raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
  resolve_dtype(cfg_get(cfg, "dtype", "float32"))
  if cfg_get(cfg, "pooling", "mean") not in POOLINGS:
    raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {cfg_get(cfg, 'pooling')!r}")
  check_attention_config(cfg)


class Embedder(nnx.Module):
  """Token embedding ``[vocab, embed]`` plus the absolute position embedding if any."""

  def __init__(self, cfg: Any, *, vocab_size: int, rngs: nnx.Rngs):
    check_positive_int(vocab_size, "vocab_size")
    self.dtype = resolve_dtype(cfg_get(cfg, "dtype", "float32"))
    self.d_model = cfg.d_model
    self.position = cfg_get(cfg, "position", "none")
    self.rope_base = float(cfg_get(cfg, "rope_base", 10000.0))
    self.tokens = nnx.Embed(
        vocab_size, cfg.d_model, dtype=self.dtype, param_dtype=jnp.float32,
        embedding_init=logical_init(nnx.initializers.normal(0.02), ("vocab", "embed")),
        rngs=rngs)
    self.learned = nnx.data(None)
    if self.position == "learned":
      self.learned = positions_lib.LearnedPositionEmbedding(
          cfg.max_len, cfg.d_model, dtype=self.dtype, rngs=rngs)

  def __call__(self, tokens: Array, positions: Array) -> Array:
    """``tokens [B, T]``, ``positions [B|1, T]`` -> ``[B, T, d_model]`` compute dtype."""
    x = self.tokens(tokens)
    if self.position == "learned":
      x = x + self.learned(positions).astype(x.dtype)
    elif self.position == "sinusoidal":
      x = x + positions_lib.sinusoidal_embedding(positions, self.d_model).astype(x.dtype)
    return x
