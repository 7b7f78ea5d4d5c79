"""Decoder-only causal language model (pre-LN, GPT style)."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Float, Int

from attnlab.core import masks
from attnlab.models import builder
from attnlab.models import config as config_lib
from attnlab.models.common import Embedder, check_tokens
from attnlab.nn import positions as positions_lib
from attnlab.nn.common import check_positive_int, resolve_dtype
from attnlab.nn.partitioning import logical_init

Array = jax.Array


class DecoderLM(nnx.Module):
  """Token embedding, positions, ``num_layers`` causal blocks, final norm, LM head.

  Parameters: ``embedder.tokens.embedding [vocab, embed]``; ``head.kernel [embed, vocab]``
  unless ``tie_embeddings`` (then logits are ``x @ embedding.T``).
  """

  def __init__(self, cfg: Any, *, vocab_size: int, rngs: nnx.Rngs):
    """``cfg``: a model config (``attnlab.models.default_model_config`` layout; missing keys
    take their defaults), checked here."""
    cfg = config_lib.complete(cfg)
    builder.check(cfg)
    self.vocab_size = vocab_size
    self.num_layers, self.num_heads = cfg.num_layers, cfg.num_heads
    self.max_len = cfg.max_len
    self.tie_embeddings = bool(cfg.tie_embeddings)
    dtype = resolve_dtype(cfg.dtype)
    self.embedder = Embedder(cfg, vocab_size=vocab_size, rngs=rngs)
    self.stack = builder.stack(cfg, causal=True, rngs=rngs)
    self.final_norm = builder.final_norm(cfg, rngs)
    self.head = nnx.data(None)
    if not self.tie_embeddings:
      self.head = nnx.Linear(
          cfg.d_model, vocab_size, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
          kernel_init=logical_init(nnx.initializers.lecun_normal(), ("embed", "vocab")),
          rngs=rngs)
    self.cache_index = nnx.data(None)

  def init_cache(self, batch: int, max_len: int | None = None, dtype: Any = None) -> None:
    """Allocate every layer's KV cache ``[batch, max_len, kv_heads, head_dim]``; index 0."""
    max_len = self.max_len if max_len is None else max_len
    check_positive_int(max_len, "max_len")
    self.stack.init_cache(batch, max_len, dtype)
    self.cache_index = nnx.Cache(jnp.zeros((), jnp.int32))

  def __call__(self, tokens: Int[Array, "B T"], *, positions: Int[Array, "*B T"] | None = None,
               segment_ids: Int[Array, "B T"] | None = None, deterministic: bool = True,
               head_masks: Float[Array, "L *B H"] | None = None, attn_biases: Any = None,
               record_weights_layers: Sequence[int] = (), decode: bool = False) -> Any:
    """Next-token logits.

    Args:
      tokens: int ``[B, T]``.
      positions: int ``[B, T]`` or ``[T]``; default ``arange(T)`` (``+`` the cache index when
        decoding). Pass per-document positions with ``segment_ids`` for packed sequences.
      segment_ids: int ``[B, T]``; tokens attend only within their segment (packing).
      deterministic: False enables dropout (needs the module's rngs).
      head_masks: ``[L, H]`` or ``[L, B, H]`` per-layer head multipliers (traced).
      attn_biases: ``[L, B|1, H|1, T|1, S|1]`` or a length-L list of arrays/None: additive
        attention-logit biases per layer (traced). ``S = T``, or the cache length if decoding.
      record_weights_layers: static layer indices whose attention weights to return.
      decode: incremental decoding with the KV cache (``init_cache`` first); ``tokens`` are the
        next ``T`` tokens (prefill with T > 1 or one token per step).

    Returns:
      logits float32 ``[B, T, vocab]``; with ``record_weights_layers`` non-empty,
      ``(logits, {layer: weights float32 [B, H, T, S]})``.
    """
    tokens = check_tokens(tokens)
    b, t = tokens.shape
    offset: Any = 0
    if decode:
      if self.cache_index is None:
        raise ValueError("decode=True needs a KV cache: call init_cache(batch, max_len) first")
      if segment_ids is not None:
        raise ValueError("segment_ids are not supported with decode=True")
      offset = self.cache_index[...]
      self.cache_index[...] = offset + t
    elif t > self.max_len and self.embedder.position == "learned":
      raise ValueError(f"sequence length {t} exceeds max_len {self.max_len}")
    if positions is None:
      positions = positions_lib.default_positions(b, t, offset)
    else:
      positions = positions_lib.check_positions(positions, b, t)
    mask = None
    if segment_ids is not None:
      segment_ids = check_tokens(segment_ids, "segment_ids")
      if segment_ids.shape != (b, t):
        raise ValueError(f"segment_ids must have the tokens' shape {(b, t)}, got "
                         f"{segment_ids.shape}")
      mask = masks.SegmentMask(segment_ids)
    x = self.embedder(tokens, positions)
    x, weights = self.stack(x, positions=positions, mask=mask, deterministic=deterministic,
                            head_masks=head_masks, attn_biases=attn_biases,
                            record_weights_layers=record_weights_layers, decode=decode)
    x = self.final_norm(x)
    if self.tie_embeddings:
      logits = self.embedder.tokens.attend(x)
    else:
      logits = self.head(x)
    logits = logits.astype(jnp.float32)
    return (logits, weights) if record_weights_layers else logits
