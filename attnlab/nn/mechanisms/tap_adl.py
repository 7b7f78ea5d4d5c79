"""TAP + ADL attention module ("tap_adl"; arXiv 2303.11126).

Token-aware average pooling (``attnlab.core.mechanisms.tap_adl.token_aware_average_pool``) of
the block's normalised input, then ``MultiHeadAttention`` on the pooled tokens (ending in
``attnlab.attention``). When ``adl_weight > 0`` the attention weights are also computed and the
attention diversification loss of this layer is sown as an auxiliary loss::

    self.sow(nnx.Intermediate, "aux_loss", adl_weight * ADL / num_layers)

so that the sum of every sown ``aux_loss`` over the layers is ``adl_weight`` times the mean
ADL over layers, as in the paper's objective ``CE + lambda * ADL`` (the trainer adds the sown
values to the loss). Hyperparameters (typed keyword arguments):

* ``num_scales`` (int > 0, default 4): dilations 0 .. S-1 (the paper's default 4).
* ``tap_temperature`` (float > 0, default 1.0): softmax temperature of the scale weights.
* ``adl_weight`` (float >= 0, default 1.0): the paper's ``--adloss`` (default 1).
* ``adl_threshold`` (float >= 0, default 2.0): ``tau = adl_threshold / T`` (the paper's 2).

Departures: 1-D (causal for a decoder) neighbourhoods, no BatchNorm in the scale predictor,
TAP after the block's pre-norm (see the core module). Decoding with a KV cache is not
supported (TAP reads raw neighbouring inputs that the KV cache does not keep).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from attnlab.core import masks
from attnlab.core.mechanisms import tap_adl as core
from attnlab.nn.attention import MultiHeadAttention, register_attention_module
from attnlab.nn.mechanisms._mixer_base import check_value, make_param

Array = jax.Array


@register_attention_module("tap_adl")
class TAPAttention(MultiHeadAttention):
  """TAP + ADL attention over ``x [B, T, E]``; see the module docstring.

  ``num_layers``: depth of the stack (the sown loss is divided by it); ``**kwargs``:
  ``MultiHeadAttention``'s arguments.
  """

  core_mechanism = "softmax"

  def __init__(self, d_model: int, num_heads: int, *, num_scales: int = 4,
               tap_temperature: float = 1.0, adl_weight: float = 1.0,
               adl_threshold: float = 2.0, num_layers: int = 1, rngs: nnx.Rngs,
               **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    self.num_scales = check_value(num_scales, "num_scales", "int>0", self.mechanism)
    self.tap_temperature = check_value(tap_temperature, "tap_temperature", "float>0",
                                       self.mechanism)
    self.adl_weight = check_value(adl_weight, "adl_weight", "float>=0", self.mechanism)
    self.adl_threshold = check_value(adl_threshold, "adl_threshold", "float>=0",
                                     self.mechanism)
    self.adl_layers = check_value(num_layers, "num_layers", "int>0", self.mechanism)
    s = self.num_scales
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1),
                                             out_axis=2)
    self.conv1 = make_param(rngs, init, (3, d_model, s), (None, "embed", None))
    self.conv2 = make_param(rngs, init, (3, s, s), (None, None, None))

  def pool(self, x: Array, mask: masks.Mask | None) -> Array:
    """TAP of ``x [B, T, E]`` under the causal/window mask and the caller's ``mask``."""
    t = x.shape[1]
    full = masks.combine(self.structural_mask(t, t, 0, False), mask)
    allowed = None if full is None else full.dense(t, t)
    return core.token_aware_average_pool(x, self.conv1[...], self.conv2[...],
                                         causal=self.causal, allowed=allowed,
                                         temperature=self.tap_temperature).astype(x.dtype)

  def __call__(self, x: Array, *, positions: Array | None = None,
               mask: masks.Mask | None = None, head_mask: Array | None = None,
               bias: Array | None = None, decode: bool = False, return_weights: bool = False,
               deterministic: bool = True) -> Any:
    if decode:
      raise ValueError("tap_adl does not support decode=True (token-aware pooling reads raw "
                       "neighbouring inputs, which the KV cache does not keep)")
    if x.ndim != 3 or x.shape[-1] != self.d_model:
      raise ValueError(f"x must have shape [batch, length, d_model={self.d_model}], got "
                       f"{x.shape}")
    adl = self.adl_weight > 0
    out = super().__call__(self.pool(x, mask), positions=positions, mask=mask,
                           head_mask=head_mask, bias=bias, return_weights=return_weights or adl,
                           deterministic=deterministic)
    if not (return_weights or adl):
      return out
    y, weights = out
    if adl:
      loss = core.attention_diversification_loss(weights, threshold=self.adl_threshold)
      self.sow(nnx.Intermediate, "aux_loss", self.adl_weight * loss / self.adl_layers)
    return (y, weights) if return_weights else y
