"""Deconstructing Attention "StaticEmbQK" (``StaticEmbQKAttention``): Q, K from the static
input embeddings, V from the current hidden state.

Paper: "Deconstructing Attention: Investigating Design Principles for Effective Language
Modeling" (arXiv 2510.11602), Eq. 13 (see ``attnlab.core.mechanisms.decon_staticqk``). The
module at layer 0 publishes its input (the pre-normed embeddings
``LN_0(Emb(t) [+ absolute positions])``) to the later layers of the same stack through a shared
``StaticInputTap``; layers > 0 project Q, K from it. Departure: the paper uses ``Emb(t)``
itself; here it is layer 0's normalised attention input (the block is pre-LN). Needs layer 0
to be this mechanism too (so the paper's hybrid with standard attention at layer 0 needs a
stack hook) unless the caller passes ``embeddings=`` (e.g. the stack input ``Emb(t)``, which is
then used as is, as in the paper). Ends in softmax attention (KV cache, GQA, RoPE, head masks,
biases and weights as ``MultiHeadAttention``). Shapes: x ``[B, T, E]`` -> ``[B, T, E]``.
"""

from __future__ import annotations

import weakref
from typing import Any

import jax
from flax import nnx

from attnlab.nn.attention import MultiHeadAttention, register_attention_module

Array = jax.Array


class StaticInputTap(nnx.Module):
  """Shared by the StaticEmbQK modules of one stack: layer 0 writes its input during a forward
  pass; later layers read it; the last reader clears it (so no array stays in the state)."""

  def __init__(self):
    self.value = nnx.data(None)
    self.readers: tuple[int, ...] = ()


# Taps of stacks under construction, keyed by the ``rngs`` object all their layers share
# (weakly: an entry dies with its rngs, so a later model can never pick up a stale tap).
_TAPS: "weakref.WeakKeyDictionary[nnx.Rngs, StaticInputTap]" = weakref.WeakKeyDictionary()


@register_attention_module("decon_staticqk")
class StaticEmbQKAttention(MultiHeadAttention):
  """Softmax attention with ``Q, K = e W_{Q,K}`` (static input ``e``) and ``V = x W_V``.

  ``layer_index``: this layer's index in its stack (layer 0 publishes the static input to the
  later layers built with the same ``rngs``); ``**kwargs``: ``MultiHeadAttention``'s arguments.
  """

  core_mechanism = "softmax"

  def __init__(self, d_model: int, num_heads: int, *, layer_index: int = 0, rngs: nnx.Rngs,
               **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    if layer_index == 0:
      _TAPS[rngs] = StaticInputTap()
    tap = _TAPS.get(rngs)
    if tap is not None:
      tap.readers = tap.readers + (layer_index,)
    self.layer_index = layer_index
    self.tap = tap
    self.static_input = nnx.data(None)

  def project_qkv(self, x: Array) -> tuple[Array, Array, Array]:
    e = self.static_input
    return self.q(e), self.k(e), self.v(x)

  def __call__(self, x: Array, *, embeddings: Array | None = None, **kwargs: Any) -> Any:
    """As ``MultiHeadAttention.__call__``; ``embeddings [B, T, E]`` (optional) overrides the
    static input published by layer 0."""
    tap = getattr(self, "tap", None)
    layer = getattr(self, "layer_index", 0)
    if embeddings is None:
      if tap is None:
        raise ValueError("decon_staticqk: no static input. Layer 0 must use decon_staticqk as "
                         "well (it publishes the embeddings), or pass embeddings=")
      if layer == 0:
        tap.value = x
      embeddings = tap.value
      if embeddings is None:
        raise ValueError(f"decon_staticqk layer {layer}: layer 0 did not publish its input in "
                         "this forward pass")
    if embeddings.shape != x.shape:
      raise ValueError(f"embeddings {embeddings.shape} must match x {x.shape}")
    self.static_input = embeddings
    try:
      return super().__call__(x, **kwargs)
    finally:
      self.static_input = None
      if tap is not None and tap.readers and layer == max(tap.readers):
        tap.value = None
