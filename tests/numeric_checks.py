"""Numeric checks shared by tests in several folders (pytest puts ``tests/`` on ``sys.path``
because ``tests/conftest.py`` lives there).

* ``assert_close``: float64 comparison with the tolerances of the naive-reference tests.
* Naive building blocks written independently of the library: ``gelu``, ``silu``, ``ln``.
* ``check``: a core function's values against a naive numpy float64 formula, and its gradients
  against central differences of that formula along random directions.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

RTOL, ATOL = 2e-4, 2e-5


def rand(*shape, seed=0, scale=1.0):
  return (np.random.RandomState(seed).standard_normal(shape) * scale).astype(np.float32)


def assert_close(a, b, rtol=RTOL, atol=ATOL):
  chex.assert_trees_all_close(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol,
                              atol=atol)


def erf(xp, x):
  return special.erf(x) if xp is np else jax.scipy.special.erf(x)


def gelu(xp, x):
  return 0.5 * x * (1.0 + erf(xp, x / math.sqrt(2.0)))


def silu(xp, x):
  return x / (1.0 + xp.exp(-x))


def ln(xp, x, s, b, eps):
  m = x.mean(-1, keepdims=True)
  v = ((x - m) ** 2).mean(-1, keepdims=True)
  return (x - m) / xp.sqrt(v + eps) * s + b


def tree_f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def first(out):
  return out[0] if isinstance(out, tuple) else out


def check(core_fn, naive_fn, args, *, seeds=(11, 12), eps=1e-4, rtol=2e-3):
  """Values of ``core_fn(*args)`` (float32, one jitted value-and-grad) against
  ``naive_fn(*args)`` (numpy float64 loops), and the gradient of ``sum(out * ct)`` (``out`` the
  first output) w.r.t. every argument against central differences of the naive formula along
  random directions. Returns the core outputs."""
  base = tree_f64(args)
  want = naive_fn(*base)
  ct = np.random.RandomState(9).standard_normal(np.shape(first(want)))

  def loss(*a):
    out = core_fn(*a)
    return jnp.sum(first(out) * ct), out

  (_, got), grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args))),
                                               has_aux=True))(*args)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert_close(a, b)

  def naive_loss(*a):
    return float(np.sum(first(naive_fn(*a)) * ct))

  for seed in seeds:
    rng = np.random.RandomState(seed)
    dirs = jax.tree.map(lambda a: rng.standard_normal(np.shape(a)), base)
    plus = jax.tree.map(lambda a, u: a + eps * u, base, dirs)
    minus = jax.tree.map(lambda a, u: a - eps * u, base, dirs)
    numeric = (naive_loss(*plus) - naive_loss(*minus)) / (2 * eps)
    analytic = sum(float(np.sum(np.asarray(g, np.float64) * u))
                   for g, u in zip(jax.tree.leaves(grads), jax.tree.leaves(dirs)))
    assert analytic == pytest.approx(numeric, rel=rtol, abs=1e-4), (seed, analytic, numeric)
  return got
