"""Pieces shared by the decoder and encoder models: token checks and the embedder."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.nn import positions as positions_lib
from attnlab.nn.common import check_positive_int, resolve_dtype
from attnlab.nn.partitioning import logical_init

Array = jax.Array

def check_tokens(tokens: Any, name: str = "tokens") -> Array:
  tokens = jnp.asarray(tokens)
  if tokens.ndim != 2:
    raise ValueError(f"{name} must have shape [batch, length], got {tokens.shape}")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise TypeError(f"{name} must be an integer array, got dtype {tokens.dtype}")
  return tokens


class Embedder(nnx.Module):
  """Token embedding ``[vocab, embed]`` plus the absolute position embedding if any.

  ``cfg``: a completed model config (``attnlab.models.config.complete``).
  """

  def __init__(self, cfg: Any, *, vocab_size: int, rngs: nnx.Rngs):
    check_positive_int(vocab_size, "vocab_size")
    self.dtype = resolve_dtype(cfg.dtype)
    self.d_model = cfg.d_model
    self.position = cfg.position
    self.rope_base = float(cfg.rope_base)
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
