"""Modules for the "Deconstructing Attention" ablations (arXiv 2510.11602); the math and the
paper's equations are in ``attnlab.core.mechanisms_mixers.deconstruct``.

* ``MixerNone`` ("mixer_none", paper's "MLP"): a gated MLP replaces attention; no token mixing.
  Option ``hidden_dim`` (int >= 0, default 0 = match the attention's parameter count,
  ``(2 H + 2 K) D E / (3 E)``). Ends in ``gated_mlp``.
* ``FixedQKMixer`` ("mixer_fixed", paper's "RndEmbQK"): Q and K come from a fixed random
  embedding ``eps [max_len, E]`` of the *positions* (``eps ~ N(0, embedding_std^2 I)``),
  projected by trained ``W_Q, W_K``; V from the hidden state. The attention matrix is the
  same for every input (a fixed causal mixing matrix, trained through ``W_Q, W_K``). Options
  ``embedding`` ("random": frozen, as the paper | "learned": ``eps`` trained) and
  ``embedding_std``. Departure: the paper passes ``eps`` through the Transformer blocks below
  layer ``l``; here it is projected directly (a module cannot run the stack). RoPE is applied
  to these Q, K when the model uses RoPE (still input-independent). Ends in softmax attention.
* ``StaticEmbQKAttention`` ("decon_staticqk", paper's "StaticEmbQK"): Q, K from the static
  input embeddings, V from the current hidden state. The module at layer 0 publishes its input
  (the pre-normed embeddings ``LN_0(Emb(t) [+ absolute positions])``) to the later layers of
  the same stack through a shared ``StaticInputTap``; layers > 0 project Q, K from it.
  Departure: the paper uses ``Emb(t)`` itself; here it is layer 0's normalised attention input
  (the block is pre-LN). Needs layer 0 to be this mechanism too (so the paper's hybrid with
  standard attention at layer 0 needs a stack hook) unless the caller passes ``embeddings=``
  (e.g. the stack input ``Emb(t)``, which is then used as is, as in the paper). Ends in
  softmax attention (KV cache, GQA, RoPE, head masks, biases and weights as
  ``MultiHeadAttention``).
"""

from __future__ import annotations

import weakref
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import attnlab
from attnlab.core.mechanisms_mixers import deconstruct as core
from attnlab.nn import positions as positions_lib
from attnlab.nn.attention import MultiHeadAttention
from attnlab.nn.common import cfg_get
from attnlab.nn.mechanisms_mixers._base import (FrozenRandom, TokenMixer, lecun, make_param,
                                                no_weights, normal_init)

Array = jax.Array


def matched_hidden_dim(d_model: int, num_heads: int, num_kv_heads: int, head_dim: int) -> int:
  """Gated-MLP width with the parameter count of the q/k/v/o projections (>= 1)."""
  attn = (2 * num_heads + 2 * num_kv_heads) * head_dim * d_model
  return max(1, round(attn / (3 * d_model)))


class MixerNone(TokenMixer):
  """``O = FC_dn(SiLU(FC_gt(x)) * FC_up(x))`` per token (no token mixing)."""

  kwarg_spec = {"hidden_dim": ("int>=0", 0)}
  mixes_tokens = False

  def build(self, cfg: Any, rngs: nnx.Rngs) -> None:
    e = self.d_model
    m = self.opt("hidden_dim") or matched_hidden_dim(e, self.num_heads, self.num_kv_heads,
                                                     self.head_dim)
    self.w_gate = make_param(rngs, lecun, (e, m), ("embed", "mlp"))
    self.w_up = make_param(rngs, lecun, (e, m), ("embed", "mlp"))
    self.w_down = make_param(rngs, lecun, (m, e), ("mlp", "embed"))

  def mix(self, x, *, positions, mask, head_mask, bias, return_weights):
    del positions, mask
    no_weights(self.mechanism, head_mask, bias, return_weights)
    return core.gated_mlp(x, self.w_gate[...], self.w_up[...],
                          self.w_down[...]).astype(self.dtype)


class FixedQKMixer(TokenMixer):
  """Softmax attention with Q, K from a fixed positional embedding (input-independent)."""

  kwarg_spec = {"embedding": (("random", "learned"), "random"),
                "embedding_std": ("float>0", 1.0)}

  def build(self, cfg: Any, rngs: nnx.Rngs) -> None:
    e, h, kh, d = self.d_model, self.num_heads, self.num_kv_heads, self.head_dim
    self.position = cfg_get(cfg, "position", "none")
    self.rope_base = float(cfg_get(cfg, "rope_base", 10000.0))
    self.implementation = cfg_get(cfg_get(cfg, "attention", {}), "implementation", "auto")
    if self.position == "rope" and d % 2:
      raise ValueError(f"position='rope' needs an even head_dim, got {d}")
    init = normal_init(float(self.opt("embedding_std")))
    if self.opt("embedding") == "learned":
      self.embedding = make_param(rngs, init, (self.max_len, e), ("position", "embed"))
    else:
      self.embedding = FrozenRandom(init(rngs.params(), (self.max_len, e), jnp.float32))
    fan_in = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                               in_axis=0, out_axis=(1, 2))
    self.w_q = make_param(rngs, fan_in, (e, h, d), ("embed", "heads", "head_dim"))
    self.w_k = make_param(rngs, fan_in, (e, kh, d), ("embed", "kv_heads", "head_dim"))
    self.w_v = make_param(rngs, fan_in, (e, kh, d), ("embed", "kv_heads", "head_dim"))
    fan_in_o = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                 in_axis=(0, 1), out_axis=2)
    self.w_o = make_param(rngs, fan_in_o, (h, d, e), ("heads", "head_dim", "embed"))

  def fixed_qk(self, positions: Array) -> tuple[Array, Array]:
    """q ``[B|1, T, H, D]`` and k ``[B|1, T, K, D]`` of ``positions [B|1, T]`` (no input)."""
    table = self.embedding[...]
    if self.opt("embedding") == "random":
      table = jax.lax.stop_gradient(table)
    eps = table[jnp.clip(positions, 0, self.max_len - 1)].astype(self.dtype)
    q = jnp.einsum("bte,ehd->bthd", eps, self.w_q[...].astype(self.dtype))
    k = jnp.einsum("bte,ehd->bthd", eps, self.w_k[...].astype(self.dtype))
    if self.position == "rope":
      q = positions_lib.apply_rope(q, positions, base=self.rope_base)
      k = positions_lib.apply_rope(k, positions, base=self.rope_base)
    return q, k

  def mix(self, x, *, positions, mask, head_mask, bias, return_weights):
    b = x.shape[0]
    q, k = self.fixed_qk(positions)
    q = jnp.broadcast_to(q, (b,) + q.shape[1:])
    k = jnp.broadcast_to(k, (b,) + k.shape[1:])
    v = jnp.einsum("bte,ehd->bthd", x.astype(self.dtype), self.w_v[...].astype(self.dtype))
    out = attnlab.attention(q, k, v, mechanism="softmax", implementation=self.implementation,
                            mask=mask, bias=bias, head_mask=head_mask,
                            return_weights=return_weights)
    weights = None
    if return_weights:
      out, weights = out
    y = jnp.einsum("bthd,hde->bte", out.astype(self.dtype), self.w_o[...].astype(self.dtype))
    return (y, weights) if return_weights else y


class StaticInputTap(nnx.Module):
  """Shared by the StaticEmbQK modules of one stack: layer 0 writes its input during a forward
  pass; later layers read it; the last reader clears it (so no array stays in the state)."""

  def __init__(self):
    self.value = nnx.data(None)
    self.readers: tuple[int, ...] = ()


# Taps of stacks under construction, keyed by the ``rngs`` object all their layers share
# (weakly: an entry dies with its rngs, so a later model can never pick up a stale tap).
_TAPS: "weakref.WeakKeyDictionary[nnx.Rngs, StaticInputTap]" = weakref.WeakKeyDictionary()


class StaticEmbQKAttention(MultiHeadAttention):
  """Softmax attention with ``Q, K = e W_{Q,K}`` (static input ``e``) and ``V = x W_V``."""

  core_mechanism = "softmax"

  @classmethod
  def from_config(cls, cfg: Any, *, layer_index: int, causal: bool,
                  rngs: nnx.Rngs) -> "StaticEmbQKAttention":
    module = super().from_config(cfg, layer_index=layer_index, causal=causal, rngs=rngs)
    if layer_index == 0:
      _TAPS[rngs] = StaticInputTap()
    tap = _TAPS.get(rngs)
    if tap is not None:
      tap.readers = tap.readers + (layer_index,)
    module.layer_index = layer_index
    module.tap = tap
    module.static_input = nnx.data(None)
    return module

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
