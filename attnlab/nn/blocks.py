"""Pre-LN transformer block, norm and MLP factories, and a stack of blocks.

``TransformerBlock``: ``x + drop(attn(norm1(x)))`` then ``x + drop(mlp(norm2(x)))``
("On Layer Normalization in the Transformer Architecture", arXiv 2002.04745).

Norms and MLPs come from small registries so that variants plug in without touching the block:
``register_norm(name, factory)`` with ``factory(dim, *, eps, dtype, param_dtype, rngs)`` and
``register_mlp(name, factory)`` with ``factory(d_model, mlp_dim, *, dtype, param_dtype, rngs)``.
A factory that also declares a ``layer_index`` keyword parameter receives the block's 0-based
layer index (None for a model's final norm); ``norm_options`` reach the norm factory as keyword
arguments (e.g. the PRepBN schedule).

Block- and depth-level variants (``attnlab.nn.variants``, imported on first use) are typed
arguments here: a block's attention module may be None (dropped attention sublayer) or an
``EchoAttention`` (EchoAtt sharing), a block may have a FiRST ``router``, the stack routes
EchoAtt anchor weights (``echo_sources``), and the layer-aware norms ``"layernorm_scaled"``,
``"rmsnorm_scaled"``, ``"layernorm_prepbn"`` come from the norm registry. The model builder
(``attnlab.models``) reads them from the model config. A norm module with
``takes_deterministic = True`` is called with ``deterministic`` (train/eval behaviour, e.g.
batch statistics).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Float, Int

from attnlab.core import masks
from attnlab.nn.common import check_positive_int, resolve_dtype
from attnlab.nn.partitioning import logical_init

Array = jax.Array

# ----------------------------------------------------------------------------------------------
# Norms.

_NORMS: dict[str, Callable[..., nnx.Module]] = {}
_variants_loaded = False


def _load_variants() -> None:
  """Import ``attnlab.nn.variants`` once (registers its norms; it imports this module)."""
  global _variants_loaded
  if not _variants_loaded:
    import attnlab.nn.variants  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    _variants_loaded = True


def _call_factory(factory: Callable[..., nnx.Module], *args: Any, layer_index: int | None,
                  **kwargs: Any) -> nnx.Module:
  """Call ``factory``, adding ``layer_index`` when it declares it."""
  try:
    params = inspect.signature(factory).parameters
  except (TypeError, ValueError):
    params = {}
  if "layer_index" in params:
    kwargs["layer_index"] = layer_index
  return factory(*args, **kwargs)


def register_norm(name: str, factory: Callable[..., nnx.Module]) -> None:
  """``factory(dim, *, eps, dtype, param_dtype, rngs) -> module`` mapping ``[..., dim]``."""
  _NORMS[name] = factory


def list_norms() -> list[str]:
  _load_variants()
  return sorted(_NORMS)


def make_norm(kind: str, dim: int, *, eps: float = 1e-6, dtype: Any = jnp.float32,
              param_dtype: Any = jnp.float32, rngs: nnx.Rngs, layer_index: int | None = None,
              **options: Any) -> nnx.Module:
  """A normalization layer over the last axis: one of ``list_norms()``.

  ``layer_index`` (None outside the blocks) reaches layer-aware factories; ``options`` are the
  norm's own keyword arguments (e.g. ``warmup_steps`` of "layernorm_prepbn").
  """
  _load_variants()
  if kind not in _NORMS:
    raise ValueError(f"norm must be one of {list_norms()}, got {kind!r}")
  return _call_factory(_NORMS[kind], dim, eps=eps, dtype=dtype, param_dtype=param_dtype,
                       rngs=rngs, layer_index=layer_index, **options)


def _layernorm(dim, *, eps, dtype, param_dtype, rngs):
  return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                       scale_init=logical_init(nnx.initializers.ones_init(), ("embed",)),
                       bias_init=logical_init(nnx.initializers.zeros_init(), ("embed",)),
                       rngs=rngs)


def _rmsnorm(dim, *, eps, dtype, param_dtype, rngs):
  return nnx.RMSNorm(dim, epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                     scale_init=logical_init(nnx.initializers.ones_init(), ("embed",)),
                     rngs=rngs)


register_norm("layernorm", _layernorm)
register_norm("rmsnorm", _rmsnorm)

# ----------------------------------------------------------------------------------------------
# MLPs.


def _dense(d_in: int, d_out: int, names: tuple[str, str], *, dtype, param_dtype, rngs,
           use_bias: bool = False) -> nnx.Linear:
  return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=logical_init(nnx.initializers.lecun_normal(), names),
                    bias_init=logical_init(nnx.initializers.zeros_init(), names[1:]),
                    rngs=rngs)


class GeluMLP(nnx.Module):
  """``wo(gelu(wi(x)))``: ``[..., d_model]`` -> ``[..., d_model]``; kernels ``[embed, mlp]``,
  ``[mlp, embed]``."""

  def __init__(self, d_model: int, mlp_dim: int, *, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.wi = _dense(d_model, mlp_dim, ("embed", "mlp"), **kw)
    self.wo = _dense(mlp_dim, d_model, ("mlp", "embed"), **kw)

  def __call__(self, x: Array) -> Array:
    return self.wo(jax.nn.gelu(self.wi(x)))


class SwiGLUMLP(nnx.Module):
  """``wo(silu(gate(x)) * up(x))`` ("GLU Variants Improve Transformer", arXiv 2002.05202)."""

  def __init__(self, d_model: int, mlp_dim: int, *, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate = _dense(d_model, mlp_dim, ("embed", "mlp"), **kw)
    self.up = _dense(d_model, mlp_dim, ("embed", "mlp"), **kw)
    self.wo = _dense(mlp_dim, d_model, ("mlp", "embed"), **kw)

  def __call__(self, x: Array) -> Array:
    return self.wo(jax.nn.silu(self.gate(x)) * self.up(x))


_MLPS: dict[str, Callable[..., nnx.Module]] = {"gelu": GeluMLP, "swiglu": SwiGLUMLP}


def register_mlp(name: str, factory: Callable[..., nnx.Module]) -> None:
  """``factory(d_model, mlp_dim, *, dtype, param_dtype, rngs) -> module``."""
  _MLPS[name] = factory


def list_mlps() -> list[str]:
  return sorted(_MLPS)


def make_mlp(kind: str, d_model: int, mlp_dim: int, *, dtype: Any = jnp.float32,
             param_dtype: Any = jnp.float32, rngs: nnx.Rngs,
             layer_index: int | None = None) -> nnx.Module:
  """A position-wise MLP: one of ``list_mlps()`` (layer-aware factories as ``make_norm``)."""
  if kind not in _MLPS:
    raise ValueError(f"mlp must be one of {list_mlps()}, got {kind!r}")
  check_positive_int(mlp_dim, "mlp_dim")
  return _call_factory(_MLPS[kind], d_model, mlp_dim, dtype=dtype, param_dtype=param_dtype,
                       rngs=rngs, layer_index=layer_index)


# ----------------------------------------------------------------------------------------------
# Block.


class TransformerBlock(nnx.Module):
  """Pre-LN block over ``x [B, T, d_model]``.

  ``attention`` is any module following the ``attnlab.nn.attention`` protocol. Dropout (rate
  ``dropout``) is applied to the attention output and to the MLP output before each residual
  add. ``layer_index`` is handed to layer-aware norm and MLP factories, ``norm_options`` to the
  norm factory.

  ``attention=None`` drops the attention sublayer (``x + drop(mlp(norm2(x)))``, "Attention
  Drop"). ``router`` (``attnlab.nn.variants.LayerRouter``) gates the whole block:
  ``x + g (block(x) - x)`` (FiRST).
  """

  def __init__(self, d_model: int, mlp_dim: int, attention: nnx.Module, *,
               norm: str = "layernorm", mlp: str = "gelu", dropout: float = 0.0,
               norm_eps: float = 1e-6, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, layer_index: int | None = None,
               norm_options: Mapping[str, Any] | None = None,
               router: nnx.Module | None = None, rngs: nnx.Rngs):
    check_positive_int(d_model, "d_model")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    dtype, param_dtype = resolve_dtype(dtype), resolve_dtype(param_dtype, "param_dtype")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, layer_index=layer_index)
    norm_kw = dict(kw, **(norm_options or {}))
    self.norm1 = (nnx.data(None) if attention is None
                  else make_norm(norm, d_model, eps=norm_eps, **norm_kw))
    self.attention = nnx.data(None) if attention is None else attention
    self.norm2 = make_norm(norm, d_model, eps=norm_eps, **norm_kw)
    self.mlp = make_mlp(mlp, d_model, mlp_dim, **kw)
    self.attn_dropout = nnx.Dropout(float(dropout), rngs=rngs)
    self.mlp_dropout = nnx.Dropout(float(dropout), rngs=rngs)
    self.router = nnx.data(None) if router is None else router
    # Set by attnlab.nn.variants.attention_layer_importance (inside nnx.capture) only.
    self.capture_attention_io = False


  def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> None:
    if self.attention is not None:
      self.attention.init_cache(batch, max_len, dtype)
    if self.router is not None:
      self.router.init_cache(batch)

  def __call__(self, x: Float[Array, "B T E"], *, positions: Int[Array, "*B T"] | None = None,
               mask: masks.Mask | None = None, head_mask: Float[Array, "*B H"] | None = None,
               bias: Float[Array, "#B #H #T #S"] | None = None, deterministic: bool = True,
               decode: bool = False, return_weights: bool = False,
               shared_weights: Float[Array, "B H T S"] | None = None) -> Any:
    """``x [B, T, d_model]`` -> same shape, or ``(x, weights [B, H, T, S])``.

    ``head_mask`` and ``bias`` are traced analysis inputs passed to the attention module.
    ``shared_weights``: an anchor layer's attention weights, for an EchoAtt sharing layer.
    """
    x_in = x
    weights = None
    if self.attention is None:
      if return_weights:
        raise ValueError("this layer's attention sublayer is dropped (drop_attention_layers); "
                         "it has no attention weights")
    else:
      extra = {} if shared_weights is None else {"shared_weights": shared_weights}
      h = self.attention(_apply_norm(self.norm1, x, deterministic), positions=positions,
                         mask=mask, head_mask=head_mask, bias=bias, decode=decode,
                         return_weights=return_weights, deterministic=deterministic, **extra)
      if return_weights:
        h, weights = h
      x = x + self.attn_dropout(h, deterministic=deterministic).astype(x.dtype)
      if self.capture_attention_io:
        self.sow(nnx.Intermediate, "attention_io", (x_in, x))
    h = self.mlp(_apply_norm(self.norm2, x, deterministic))
    x = x + self.mlp_dropout(h, deterministic=deterministic).astype(x.dtype)
    if self.router is not None:
      x = self.router(x_in, x, decode=decode)
    return (x, weights) if return_weights else x


def _apply_norm(norm: nnx.Module, x: Array, deterministic: bool) -> Array:
  if getattr(norm, "takes_deterministic", False):
    return norm(x, deterministic=deterministic)
  return norm(x)


# ----------------------------------------------------------------------------------------------
# Stack: routes per-layer analysis inputs.


def check_layer_inputs(head_masks: Any, attn_biases: Any, num_layers: int,
                       num_heads: int) -> None:
  """Static checks of ``head_masks [L, H] | [L, B, H]`` and ``attn_biases``."""
  if head_masks is not None:
    shape = jnp.shape(head_masks)
    if len(shape) not in (2, 3) or shape[0] != num_layers or shape[-1] != num_heads:
      raise ValueError(f"head_masks must have shape [num_layers, heads]=({num_layers}, "
                       f"{num_heads}) or [num_layers, batch, heads], got {shape}")
  if attn_biases is not None:
    if isinstance(attn_biases, (list, tuple)):
      if len(attn_biases) != num_layers:
        raise ValueError(f"attn_biases as a sequence needs one entry (array or None) per layer "
                         f"({num_layers}), got {len(attn_biases)}")
    else:
      shape = jnp.shape(attn_biases)
      if len(shape) != 5 or shape[0] != num_layers:
        raise ValueError(f"attn_biases must have shape [num_layers={num_layers}, batch|1, "
                         f"heads|1, q_len|1, kv_len|1] or be a per-layer list, got {shape}")


class TransformerStack(nnx.Module):
  """A sequence of blocks; routes layer ``l``'s slice of the analysis inputs to layer ``l``.

  Args:
    blocks: the ``TransformerBlock``s, layer 0 first.
    num_heads: query heads of every layer (the shape of ``head_masks``).
    echo_sources: EchoAtt ``{sharing_layer: anchor_layer}``; the anchor's attention weights
      are passed to the sharing layer's ``EchoAttention`` (anchors always return weights).
  """

  def __init__(self, blocks: Sequence[TransformerBlock], *, num_heads: int,
               echo_sources: Mapping[int, int] | None = None):
    if not blocks:
      raise ValueError("blocks must hold at least one TransformerBlock, got none")
    check_positive_int(num_heads, "num_heads")
    echo_sources = dict(echo_sources or {})
    for sharing, anchor in echo_sources.items():
      if not (0 <= anchor < sharing < len(blocks)):
        raise ValueError(f"echo_sources must map a layer to an earlier anchor layer in "
                         f"[0, {len(blocks)}), got {sharing}: {anchor}")
    self.echo_sources = tuple(sorted(echo_sources.items()))
    self.num_layers = len(blocks)
    self.num_heads = num_heads
    self.blocks = nnx.List(list(blocks))

  def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> None:
    for block in self.blocks:
      block.init_cache(batch, max_len, dtype)

  def __call__(self, x: Float[Array, "B T E"], *, positions: Int[Array, "*B T"] | None = None,
               mask: masks.Mask | None = None, deterministic: bool = True,
               head_masks: Float[Array, "L *B H"] | None = None, attn_biases: Any = None,
               record_weights_layers: Sequence[int] = (), decode: bool = False,
               return_hiddens: bool = False) -> tuple[Array, dict[int, Array]]:
    """Returns ``(x, {layer: weights [B, H, T, S]})`` for the layers in
    ``record_weights_layers`` (static Python ints); with ``return_hiddens`` also the list of
    every block's output ``(x, weights, hiddens)`` (use it rather than looping over
    ``blocks``: the stack routes EchoAtt anchor weights between layers)."""
    check_layer_inputs(head_masks, attn_biases, self.num_layers, self.num_heads)
    record = set()
    for layer in record_weights_layers:
      if isinstance(layer, bool) or not isinstance(layer, int) or not (
          -self.num_layers <= layer < self.num_layers):
        raise ValueError(f"record_weights_layers entries must be ints in [0, "
                         f"{self.num_layers}), got {layer!r}")
      record.add(layer % self.num_layers)
    weights: dict[int, Array] = {}
    sources = dict(self.echo_sources)
    anchors = set(sources.values())
    anchor_weights: dict[int, Array] = {}
    hiddens: list[Array] = []
    for i, block in enumerate(self.blocks):
      hm = None if head_masks is None else head_masks[i]
      bias = None if attn_biases is None else attn_biases[i]
      want = i in record or i in anchors
      shared = anchor_weights[sources[i]] if i in sources else None
      out = block(x, positions=positions, mask=mask, head_mask=hm, bias=bias,
                  deterministic=deterministic, decode=decode, return_weights=want,
                  shared_weights=shared)
      if want:
        x, w = out
        if i in record:
          weights[i] = w
        if i in anchors:
          anchor_weights[i] = w
      else:
        x = out
      hiddens.append(x)
    return (x, weights, hiddens) if return_hiddens else (x, weights)


__all__ = ["TransformerBlock", "TransformerStack", "GeluMLP", "SwiGLUMLP", "make_norm",
           "make_mlp", "register_norm", "register_mlp", "list_norms", "list_mlps",
           "check_layer_inputs"]
