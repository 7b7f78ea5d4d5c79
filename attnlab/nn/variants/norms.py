"""Layer-aware norms: LayerNorm Scaling (Curse of Depth) and progressive RepBN (SLAB).

Registered in ``attnlab.nn.blocks`` as layer-aware norm factories (they receive the block's
0-based ``layer_index`` and the model config). Outside a block (``layer_index=None``: the final
norm of a model) they build the plain base norm. Each module's call ends in a pure function of
``attnlab.core.variants``.

* ``"layernorm_scaled"`` / ``"rmsnorm_scaled"``: ``ScaledNorm``, ``LN(x) / sqrt(layer + 1)``.
* ``"layernorm_prepbn"``: ``ProgressiveRepBN``, ``lambda LN(x) + (1 - lambda) RepBN(x)`` with
  ``config.model.prepbn`` (``warmup_steps``, ``decay_steps``, ``momentum``, ``eta_init``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnlab.core.variants import depth_scaling, prepbn
from attnlab.nn.common import check_positive_int, resolve_dtype
from attnlab.nn.partitioning import logical_init

Array = jax.Array


def _param(rngs: nnx.Rngs, init, shape, names, dtype) -> nnx.Param:
  return nnx.Param(logical_init(init, names)(rngs.params(), shape, dtype))


class ScaledNorm(nnx.Module):
  """LayerNorm (or RMSNorm, ``rms=True``) whose output is scaled by ``1/sqrt(layer_index+1)``.

  Parameters ``scale [embed]`` (and ``bias [embed]`` for LayerNorm), as ``nnx.LayerNorm``.
  ``layer_index=None`` means no depth scaling (a norm outside the blocks).
  """

  def __init__(self, dim: int, *, layer_index: int | None, rms: bool = False,
               eps: float = 1e-6, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    check_positive_int(dim, "dim")
    if layer_index is not None:
      depth_scaling.depth_scale(layer_index)  # validates
    self.layer_index, self.rms, self.eps = layer_index, bool(rms), float(eps)
    self.dtype = resolve_dtype(dtype)
    pdt = resolve_dtype(param_dtype, "param_dtype")
    self.scale = _param(rngs, nnx.initializers.ones_init(), (dim,), ("embed",), pdt)
    self.bias = nnx.data(None)
    if not rms:
      self.bias = _param(rngs, nnx.initializers.zeros_init(), (dim,), ("embed",), pdt)

  def __call__(self, x: Array) -> Array:
    bias = None if self.bias is None else self.bias[...]
    y = depth_scaling.scaled_layer_norm(
        x, self.scale[...], bias, layer_index=0 if self.layer_index is None else
        self.layer_index, eps=self.eps, rms=self.rms)
    return y.astype(self.dtype)


class ProgressiveRepBN(nnx.Module):
  """``lambda * LN(x) + (1 - lambda) * (BN(x) + eta * x)`` over ``x [..., dim]`` (SLAB PRepBN).

  Parameters: ``ln_scale``, ``ln_bias``, ``bn_scale``, ``bn_bias`` ``[embed]`` and the scalar
  ``eta``. State (``nnx.BatchStat``): ``mean``, ``var`` (running BN statistics) and ``step``
  (training calls so far, which drives ``lambda``). ``deterministic=False`` normalises with the
  batch statistics (over every axis but the last), updates the running ones and counts a step;
  ``deterministic=True`` uses the running statistics. ``folded()`` gives the inference affine
  map of RepBN and ``inference(x)`` applies it (equal to the deterministic call).
  """

  takes_deterministic = True  # the block passes ``deterministic`` to this norm

  def __init__(self, dim: int, *, warmup_steps: int = 0, decay_steps: int = 1000,
               momentum: float = 0.9, eta_init: float = 1.0, eps: float = 1e-6,
               bn_eps: float = 1e-5, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    check_positive_int(dim, "dim")
    for name, val in (("prepbn.warmup_steps", warmup_steps), ("prepbn.decay_steps",
                                                              decay_steps)):
      if isinstance(val, bool) or not isinstance(val, int) or val < 0:
        raise ValueError(f"{name} must be an int >= 0, got {val!r}")
    if not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
      raise ValueError(f"prepbn.momentum must be in [0, 1), got {momentum!r}")
    if isinstance(eta_init, bool) or not isinstance(eta_init, (int, float)):
      raise ValueError(f"prepbn.eta_init must be a number, got {eta_init!r}")
    self.warmup_steps, self.decay_steps = warmup_steps, decay_steps
    self.momentum, self.eps, self.bn_eps = float(momentum), float(eps), float(bn_eps)
    self.dtype = resolve_dtype(dtype)
    pdt = resolve_dtype(param_dtype, "param_dtype")
    ones, zeros = nnx.initializers.ones_init(), nnx.initializers.zeros_init()
    self.ln_scale = _param(rngs, ones, (dim,), ("embed",), pdt)
    self.ln_bias = _param(rngs, zeros, (dim,), ("embed",), pdt)
    self.bn_scale = _param(rngs, ones, (dim,), ("embed",), pdt)
    self.bn_bias = _param(rngs, zeros, (dim,), ("embed",), pdt)
    eta_init = float(eta_init)
    self.eta = _param(rngs, lambda key, shape, dtype: jnp.full(shape, eta_init, dtype), (), (),
                      pdt)
    self.mean = nnx.BatchStat(jnp.zeros((dim,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((dim,), jnp.float32))
    self.step = nnx.BatchStat(jnp.zeros((), jnp.int32))


  def lam(self) -> Array:
    """Current LayerNorm weight lambda (from the step counter)."""
    return prepbn.prepbn_lambda(self.step[...], warmup_steps=self.warmup_steps,
                                decay_steps=self.decay_steps)

  def _ln(self, x: Array) -> Array:
    return prepbn.layer_norm(x, self.ln_scale[...], self.ln_bias[...], eps=self.eps)

  def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
    lam = self.lam()
    if deterministic:
      mean, var = self.mean[...], self.var[...]
    else:
      mean, var = prepbn.batch_moments(x)
      m = self.momentum
      self.mean[...] = prepbn.update_running(self.mean[...], jax.lax.stop_gradient(mean), m)
      self.var[...] = prepbn.update_running(self.var[...], jax.lax.stop_gradient(var), m)
      self.step[...] = self.step[...] + 1
    bn = prepbn.repbn(x, mean, var, self.bn_scale[...], self.bn_bias[...], self.eta[...],
                      eps=self.bn_eps)
    return prepbn.progressive_norm(self._ln(x), bn, lam).astype(self.dtype)

  def folded(self) -> tuple[Array, Array]:
    """``(a, c)``: RepBN with the running statistics is ``a * x + c``."""
    return prepbn.fold_repbn(self.mean[...], self.var[...], self.bn_scale[...],
                             self.bn_bias[...], self.eta[...], eps=self.bn_eps)

  def inference(self, x: Array) -> Array:
    """Deterministic output with RepBN folded to ``a * x + c`` (no LayerNorm once lambda=0)."""
    a, c = self.folded()
    lam = self.lam()
    affine = x.astype(jnp.float32) * a + c
    out = jnp.where(lam > 0, prepbn.progressive_norm(self._ln(x), affine, lam), affine)
    return out.astype(self.dtype)


def _base_layernorm(dim, *, eps, dtype, param_dtype, rngs):
  return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                       scale_init=logical_init(nnx.initializers.ones_init(), ("embed",)),
                       bias_init=logical_init(nnx.initializers.zeros_init(), ("embed",)),
                       rngs=rngs)


def _base_rmsnorm(dim, *, eps, dtype, param_dtype, rngs):
  return nnx.RMSNorm(dim, epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                     scale_init=logical_init(nnx.initializers.ones_init(), ("embed",)),
                     rngs=rngs)


def layernorm_scaled(dim, *, eps, dtype, param_dtype, rngs, layer_index=None):
  if layer_index is None:
    return _base_layernorm(dim, eps=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  return ScaledNorm(dim, layer_index=layer_index, eps=eps, dtype=dtype,
                    param_dtype=param_dtype, rngs=rngs)


def rmsnorm_scaled(dim, *, eps, dtype, param_dtype, rngs, layer_index=None):
  if layer_index is None:
    return _base_rmsnorm(dim, eps=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  return ScaledNorm(dim, layer_index=layer_index, rms=True, eps=eps, dtype=dtype,
                    param_dtype=param_dtype, rngs=rngs)


def layernorm_prepbn(dim, *, eps, dtype, param_dtype, rngs, layer_index=None,
                     warmup_steps: int = 0, decay_steps: int = 1000, momentum: float = 0.9,
                     eta_init: float = 1.0):
  """PRepBN inside the blocks (``layer_index`` set), LayerNorm for the final norm."""
  if layer_index is None:
    return _base_layernorm(dim, eps=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  return ProgressiveRepBN(dim, warmup_steps=warmup_steps, decay_steps=decay_steps,
                          momentum=momentum, eta_init=eta_init, eps=eps, dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)


NORMS = {"layernorm_scaled": layernorm_scaled, "rmsnorm_scaled": rmsnorm_scaled,
         "layernorm_prepbn": layernorm_prepbn}
