"""``chunk_linear_attention``: layout, padding, driver choice and the custom_vjp."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from attnlab.kernels.linear import mosaic_tpu, triton

Array = jax.Array
BACKENDS = ("triton", "mosaic")


def _default_backend() -> str:
  return "mosaic" if jax.default_backend() == "tpu" else "triton"


def _default_interpret(backend: str) -> Any:
  if jax.default_backend() != "cpu":
    return False
  if backend == "mosaic":
    from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
    return pltpu.InterpretParams()
  return True


def _launch(a, b, c, g, cfg):
  """``K(a, b, c)`` on ``[R, T, D]`` rows, T padded to a chunk multiple."""
  backend, chunk, interpret = cfg
  t = a.shape[1]
  pad = (-t) % chunk
  if pad:
    a, b, c = (jnp.pad(x, ((0, 0), (0, pad), (0, 0))) for x in (a, b, c))
  fn = mosaic_tpu.run if backend == "mosaic" else triton.run
  return fn(a, b, c, g, chunk=chunk, interpret=interpret)[:, :t]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _kernel(a, b, c, g, cfg):
  return _launch(a, b, c, g, cfg)


def _fwd(a, b, c, g, cfg):
  return _launch(a, b, c, g, cfg), (a, b, c, g)


def _bwd(cfg, res, do):
  q, k, v, g = res
  flip = lambda x: x[:, ::-1]  # noqa: E731
  dq = _launch(do, v, k, g, cfg)
  dk = flip(_launch(flip(v), flip(do), flip(q), g, cfg))
  dv = flip(_launch(flip(k), flip(q), flip(do), g, cfg))
  return dq, dk, dv, None if g is None else jnp.zeros_like(g)


_kernel.defvjp(_fwd, _bwd)


def unsupported_reason(q: Array, k: Array, v: Array, log_decay: Any = None,
                       chunk_size: int = 64) -> str | None:
  """Why the kernel refuses the inputs (None: supported)."""
  if q.ndim != 4 or k.shape != q.shape or v.ndim != 4 or v.shape[:3] != q.shape[:3]:
    return f"q, k [B, T, H, Dk], v [B, T, H, Dv] expected, got {q.shape}, {k.shape}, {v.shape}"
  if log_decay is not None and jnp.shape(log_decay) != (q.shape[2],):
    return (f"only a constant decay per head [H]=({q.shape[2]},) is fused, got "
            f"{jnp.shape(log_decay)} (data-dependent decays: attnlab.core.linear)")
  if not isinstance(chunk_size, int) or chunk_size <= 0 or chunk_size % 8:
    return f"chunk_size must be a positive multiple of 8, got {chunk_size!r}"
  return None


def chunk_linear_attention(q: Array, k: Array, v: Array, *, log_decay: Array | None = None,
                           normalize: bool = False, eps: float = 1e-6, chunk_size: int = 64,
                           backend: str | None = None, interpret: Any = None) -> Array:
  """Causal linear attention ``o_i = sum_{j<=i} gamma_h^(i-j) (q_i.k_j) v_j`` (feature-mapped
  ``q, k [B, T, H, Dk]``, ``v [B, T, H, Dv]``, ``log_decay [H]`` or None), with the
  normaliser ``/ (sum_j gamma^(i-j) q_i.k_j + eps)`` when ``normalize``; equal to
  ``attnlab.core.linear.linear_attention(..., decay=log_decay, normalize=normalize)``.
  Gradients w.r.t. q, k, v (the decay is treated as a constant). ``backend``: "triton" or
  "mosaic" (default per platform); ``interpret``: default True on CPU."""
  reason = unsupported_reason(q, k, v, log_decay, chunk_size)
  if reason:
    raise ValueError(f"chunk_linear_attention: {reason}")
  backend = backend or _default_backend()
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
  interpret = _default_interpret(backend) if interpret is None else interpret
  b, t, h, dk = q.shape
  rows = lambda x: jnp.moveaxis(jnp.asarray(x, jnp.float32), 2, 1).reshape(  # noqa: E731
      b * h, t, x.shape[-1])
  a, bb, c = rows(q), rows(k), rows(v)
  if normalize:
    c = jnp.concatenate([c, jnp.ones(c.shape[:-1] + (1,), jnp.float32)], axis=-1)
  g = None
  if log_decay is not None:
    # A constant: no gradient flows to the decay (stated, not silently zero).
    g = jax.lax.stop_gradient(jnp.broadcast_to(jnp.asarray(log_decay, jnp.float32)[None],
                                               (b, h)).reshape(b * h))
  out = _kernel(a, bb, c, g, (backend, int(chunk_size), interpret))
  if normalize:
    den = out[..., -1:] + eps
    out = out[..., :-1] / jnp.where(den == 0.0, 1.0, den)
  out = jnp.moveaxis(out.reshape(b, h, t, out.shape[-1]), 1, 2)
  return out.astype(q.dtype)
