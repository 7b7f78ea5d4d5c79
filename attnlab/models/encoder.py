"""Bidirectional encoder with a classification head (BERT-style, pre-LN).

Pooling (``config.model.pooling``): "mean" (over real tokens), "cls" (position 0), or an
attention pooling head registered with ``register_pooling`` (``list_poolings()``), built from
the model config with its options in ``config.model.pooling_kwargs``. Registered here:
the heads of ``attnlab.models.pooling`` (LAMA, arXiv 1912.00835, and Multi-Layers Trainable
Pooling, arXiv 2409.02727; the latter reads every layer's hidden states, so the encoder then
runs its blocks one by one and collects their outputs).
"""

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
from attnlab.nn.common import resolve_dtype
from attnlab.nn.partitioning import logical_init

Array = jax.Array

class EncoderClassifier(nnx.Module):
  """Embedding, positions, ``num_layers`` bidirectional blocks, final norm, pooling, head.

  Padding: pass ``lengths [B]`` (right padding, via ``masks.ValidLengthMask``) or ``weights
  [B, T]`` (nonzero = real token, any layout, via ``masks.SegmentMask``). Padded keys are never
  attended by real tokens and padded positions are excluded from mean pooling, so padded token
  ids do not change the logits. ``pooling="cls"`` reads position 0; other names are attention
  pooling heads (``list_poolings()``, options in ``pooling_kwargs``).
  """

  def __init__(self, cfg: Any, *, vocab_size: int, rngs: nnx.Rngs):
    """``cfg``: a model config (missing keys take their defaults), checked here."""
    cfg = config_lib.complete(cfg)
    builder.check(cfg)
    self.num_layers, self.num_heads = cfg.num_layers, cfg.num_heads
    self.max_len = cfg.max_len
    self.pooling = cfg.pooling
    dtype = resolve_dtype(cfg.dtype)
    self.embedder = Embedder(cfg, vocab_size=vocab_size, rngs=rngs)
    self.stack = builder.stack(cfg, causal=False, rngs=rngs)
    self.final_norm = builder.final_norm(cfg, rngs)
    self.dropout = nnx.Dropout(float(cfg.dropout), rngs=rngs)
    self.pool = nnx.data(None)
    pooled_dim = cfg.d_model
    head = builder.pooling_head(cfg, rngs)
    if head is not None:
      self.pool = head
      pooled_dim = head.out_dim
    self.head = nnx.Linear(
        pooled_dim, cfg.num_classes, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=logical_init(nnx.initializers.lecun_normal(), ("embed", "classes")),
        bias_init=logical_init(nnx.initializers.zeros_init(), ("classes",)), rngs=rngs)

  def __call__(self, tokens: Int[Array, "B T"], *, lengths: Int[Array, "B"] | None = None,
               weights: Float[Array, "B T"] | None = None,
               positions: Int[Array, "*B T"] | None = None, deterministic: bool = True,
               head_masks: Float[Array, "L *B H"] | None = None,
               attn_biases: Any = None, record_weights_layers: Sequence[int] = ()) -> Any:
    """Class logits.

    Args:
      tokens: int ``[B, T]``.
      lengths: int ``[B]`` number of real (leading) tokens; or
      weights: ``[B, T]`` nonzero for real tokens (at most one of the two).
      positions: int ``[B, T]`` or ``[T]``; default ``arange(T)``.
      deterministic: False enables dropout.
      head_masks, attn_biases, record_weights_layers: as ``DecoderLM``.

    Returns:
      logits float32 ``[B, num_classes]``; with ``record_weights_layers`` non-empty,
      ``(logits, {layer: weights float32 [B, H, T, T]})``.
    """
    tokens = check_tokens(tokens)
    b, t = tokens.shape
    if lengths is not None and weights is not None:
      raise ValueError("pass at most one of lengths and weights")
    if t > self.max_len and self.embedder.position == "learned":
      raise ValueError(f"sequence length {t} exceeds max_len {self.max_len}")
    mask, valid = None, None
    if lengths is not None:
      lengths = jnp.asarray(lengths)
      if lengths.shape != (b,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be an int array of shape [batch]=({b},), got "
                         f"{lengths.shape} {lengths.dtype}")
      mask = masks.ValidLengthMask(kv_lengths=lengths)
      valid = jnp.arange(t)[None, :] < lengths[:, None]
    elif weights is not None:
      weights = jnp.asarray(weights)
      if weights.shape != (b, t):
        raise ValueError(f"weights must have the tokens' shape {(b, t)}, got {weights.shape}")
      valid = weights != 0
      mask = masks.SegmentMask(valid.astype(jnp.int32))
    positions = (positions_lib.default_positions(b, t) if positions is None
                 else positions_lib.check_positions(positions, b, t))
    x = self.embedder(tokens, positions)
    hiddens = None
    if self.pool is not None and self.pool.all_layers:
      x, recorded, hiddens = self.stack(
          x, positions=positions, mask=mask, deterministic=deterministic,
          head_masks=head_masks, attn_biases=attn_biases,
          record_weights_layers=record_weights_layers, return_hiddens=True)
    else:
      x, recorded = self.stack(x, positions=positions, mask=mask, deterministic=deterministic,
                               head_masks=head_masks, attn_biases=attn_biases,
                               record_weights_layers=record_weights_layers)
    x = self.final_norm(x).astype(jnp.float32)
    if self.pool is not None:
      if hiddens is not None:  # as HF hidden_states[1:]: the last one after the final norm
        hiddens = jnp.stack([h.astype(jnp.float32) for h in hiddens[:-1]] + [x])
      pooled = self.pool(x, valid=valid, hiddens=hiddens)
    elif self.pooling == "cls":
      pooled = x[:, 0]
    elif valid is None:
      pooled = x.mean(axis=1)
    else:
      w = valid.astype(jnp.float32)[..., None]
      pooled = (x * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1.0)
    pooled = self.dropout(pooled, deterministic=deterministic)
    logits = self.head(pooled.astype(self.head.dtype or jnp.float32)).astype(jnp.float32)
    return (logits, recorded) if record_weights_layers else logits
