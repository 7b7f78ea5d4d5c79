"""Bidirectional encoder with a classification head (BERT-style, pre-LN).

Pooling (``config.model.pooling``): "mean" (over real tokens), "cls" (position 0), or an
attention pooling head registered with ``register_pooling`` (``list_poolings()``), built from
the model config with its options in ``config.model.pooling_kwargs``. Registered here:
"lowrank_mha_pool" (LAMA, arXiv 1912.00835) and "multilayer_pool" (Multi-Layers Trainable
Pooling, arXiv 2409.02727; it reads every layer's hidden states, so the encoder then runs its
blocks one by one and collects their outputs). See ``attnlab.nn.mechanisms_mixers.pooling``.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

import attnlab.nn.mechanisms_mixers  # noqa: F401  (registers the token mixers)
from attnlab.core import masks
from attnlab.models import common as models_common
from attnlab.models.common import Embedder, check_tokens, validate_model_config
from attnlab.nn import positions as positions_lib
from attnlab.nn.blocks import TransformerStack, check_layer_inputs, make_norm
from attnlab.nn.mechanisms_mixers.pooling import POOLINGS as _MIXER_POOLINGS
from attnlab.nn.common import cfg_get, check_positive_int, resolve_dtype, to_dict
from attnlab.nn.partitioning import logical_init

Array = jax.Array

BUILTIN_POOLINGS = ("mean", "cls")
_POOLINGS: dict[str, type] = {}


def register_pooling(name: str, cls: type) -> None:
  """Make ``cls`` selectable as ``config.model.pooling = name``.

  ``cls(cfg, rngs=rngs)`` builds it from the model config and must provide ``out_dim``,
  ``all_layers`` (bool), ``check_config(cfg)`` (classmethod, raises ValueError) and
  ``__call__(x [B, T, D], *, valid [B, T] | None, hiddens [L, B, T, D] | None)
  -> [B, out_dim]``. ``hiddens`` (every block's output, the last after the final norm) is
  passed when ``all_layers``.
  """
  if name in BUILTIN_POOLINGS:
    raise ValueError(f"pooling {name!r} is built in")
  _POOLINGS[name] = cls
  # Keep attnlab.models.common.validate_model_config accepting the registered names.
  known = tuple(models_common.POOLINGS)
  if name not in known:
    models_common.POOLINGS = known + (name,)


def list_poolings() -> list[str]:
  return sorted(set(BUILTIN_POOLINGS) | set(_POOLINGS))


for _name, _cls in _MIXER_POOLINGS.items():
  register_pooling(_name, _cls)


class EncoderClassifier(nnx.Module):
  """Embedding, positions, ``num_layers`` bidirectional blocks, final norm, pooling, head.

  Padding: pass ``lengths [B]`` (right padding, via ``masks.ValidLengthMask``) or ``weights
  [B, T]`` (nonzero = real token, any layout, via ``masks.SegmentMask``). Padded keys are never
  attended by real tokens and padded positions are excluded from mean pooling, so padded token
  ids do not change the logits. ``pooling="cls"`` reads position 0; other names are attention
  pooling heads (``list_poolings()``, options in ``pooling_kwargs``).
  """

  def __init__(self, cfg: Any, *, vocab_size: int, rngs: nnx.Rngs):
    validate_model_config(cfg)
    check_positive_int(cfg_get(cfg, "num_classes"), "num_classes")
    self.num_layers, self.num_heads = cfg.num_layers, cfg.num_heads
    self.max_len = cfg.max_len
    self.pooling = cfg_get(cfg, "pooling", "mean")
    if self.pooling not in list_poolings():
      raise ValueError(f"pooling must be one of {list_poolings()}, got {self.pooling!r}")
    if self.pooling in BUILTIN_POOLINGS and to_dict(cfg_get(cfg, "pooling_kwargs", {})):
      raise ValueError(f"pooling {self.pooling!r} takes no pooling_kwargs, got "
                       f"{to_dict(cfg_get(cfg, 'pooling_kwargs', {}))}")
    dtype = resolve_dtype(cfg_get(cfg, "dtype", "float32"))
    self.embedder = Embedder(cfg, vocab_size=vocab_size, rngs=rngs)
    self.stack = TransformerStack(cfg, causal=False, rngs=rngs)
    self.final_norm = make_norm(cfg_get(cfg, "norm", "layernorm"), cfg.d_model,
                                eps=cfg_get(cfg, "norm_eps", 1e-6), dtype=dtype, rngs=rngs,
                                layer_index=None, model_cfg=cfg)
    self.dropout = nnx.Dropout(float(cfg_get(cfg, "dropout", 0.0)), rngs=rngs)
    self.pool = nnx.data(None)
    pooled_dim = cfg.d_model
    if self.pooling in _POOLINGS:
      self.pool = _POOLINGS[self.pooling](cfg, rngs=rngs)
      pooled_dim = self.pool.out_dim
    self.head = nnx.Linear(
        pooled_dim, cfg.num_classes, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=logical_init(nnx.initializers.lecun_normal(), ("embed", "classes")),
        bias_init=logical_init(nnx.initializers.zeros_init(), ("classes",)), rngs=rngs)

  def __call__(self, tokens: Array, *, lengths: Array | None = None,
               weights: Array | None = None, positions: Array | None = None,
               deterministic: bool = True, head_masks: Array | None = None,
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
      x, recorded, hiddens = self._run_blocks(
          x, positions=positions, mask=mask, deterministic=deterministic,
          head_masks=head_masks, attn_biases=attn_biases,
          record_weights_layers=record_weights_layers)
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

  def _run_blocks(self, x: Array, *, positions: Array, mask: masks.Mask | None,
                  deterministic: bool, head_masks: Array | None, attn_biases: Any,
                  record_weights_layers: Sequence[int]
                  ) -> tuple[Array, dict[int, Array], list[Array]]:
    """``TransformerStack.__call__`` block by block, also returning every block's output."""
    stack = self.stack
    check_layer_inputs(head_masks, attn_biases, stack.num_layers, stack.num_heads)
    record = set()
    for layer in record_weights_layers:
      if isinstance(layer, bool) or not isinstance(layer, int) or not (
          -stack.num_layers <= layer < stack.num_layers):
        raise ValueError(f"record_weights_layers entries must be ints in [0, "
                         f"{stack.num_layers}), got {layer!r}")
      record.add(layer % stack.num_layers)
    weights: dict[int, Array] = {}
    hiddens = []
    for i, block in enumerate(stack.blocks):
      hm = None if head_masks is None else head_masks[i]
      bias = None if attn_biases is None else attn_biases[i]
      out = block(x, positions=positions, mask=mask, head_mask=hm, bias=bias,
                  deterministic=deterministic, return_weights=i in record)
      if i in record:
        x, weights[i] = out
      else:
        x = out
      hiddens.append(x)
    return x, weights, hiddens
