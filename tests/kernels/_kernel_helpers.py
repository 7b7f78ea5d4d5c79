"""Shared helpers for the kernel tests: inputs, one-compile forward+VJP, tolerances."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import attnlab

# Interpret-mode kernels compile to large XLA CPU programs; optimisation level 0 roughly
# halves compile time and does not change float results we compare at these tolerances.
FAST_COMPILE = {"xla_backend_optimization_level": 0}

# Tolerances on max |kernel - reference| / max |reference|. float32: interpret mode computes
# in float32 with HIGHEST-precision dots, so only summation order differs. bfloat16: inputs
# are bf16 and the kernel (like FlashAttention) feeds the probabilities P and dS to the
# second matmuls as bf16 (relative rounding 2^-8 ~ 4e-3 per element) and rounds the outputs
# and gradients to bf16, while the reference runs in float32 from the same bf16 inputs.
TOL = {jnp.dtype(jnp.float32): 2e-5, jnp.dtype(jnp.bfloat16): 2.5e-2}


def make_inputs(seed, b, tq, tk, h, kh, d, dtype=jnp.float32, dv=None):
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(ks[0], (b, tq, h, d), jnp.float32).astype(dtype)
  k = jax.random.normal(ks[1], (b, tk, kh, d), jnp.float32).astype(dtype)
  v = jax.random.normal(ks[2], (b, tk, kh, dv or d), jnp.float32).astype(dtype)
  ct = jax.random.normal(ks[3], (b, tq, h, dv or d), jnp.float32).astype(dtype)
  return q, k, v, ct


def fwd_vjp(fn, q, k, v, ct, bias=None, fast_compile=False):
  """(out, (dq, dk, dv[, dbias])) of ``fn(q, k, v, bias)`` in one jitted computation."""
  def run(q, k, v, ct, bias):
    if bias is None:
      out, vjp = jax.vjp(lambda a, b, c: fn(a, b, c, None), q, k, v)
    else:
      out, vjp = jax.vjp(fn, q, k, v, bias)
    return out, vjp(ct)

  jitted = jax.jit(run)
  if fast_compile:
    return jitted.lower(q, k, v, ct, bias).compile(FAST_COMPILE)(q, k, v, ct, bias)
  return jitted(q, k, v, ct, bias)


def rel_err(a, b):
  a = np.asarray(jnp.asarray(a, jnp.float32))
  b = np.asarray(jnp.asarray(b, jnp.float32))
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def assert_close(got, want, dtype, what=""):
  err = rel_err(got, want)
  tol = TOL[jnp.dtype(dtype)]
  assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.3g}"


def reference(normalizer):
  return attnlab.softmax_attention if normalizer == "softmax" else attnlab.sigmoid_attention


def jit_fast(fn, *args):
  """``jax.jit(fn)(*args)`` compiled with FAST_COMPILE."""
  return jax.jit(fn).lower(*args).compile(FAST_COMPILE)(*args)
