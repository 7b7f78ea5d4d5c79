"""attnlab.core.linear: the three forms against a naive per-step loop (numpy float64, written
here from the recurrence), against each other (values and gradients), states carried across
calls, and the bidirectional form against its definition as a double loop."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab.core.linear import feature_maps, linear_attention, state_shape, step
from numeric_checks import assert_close, rand

B, T, H, DK, DV = 2, 11, 2, 3, 4


def inputs(seed=0, t=T):
  q, k, v = rand(B, t, H, DK, seed=seed), rand(B, t, H, DK, seed=seed + 1), rand(
      B, t, H, DV, seed=seed + 2)
  g = -np.abs(rand(B, t, H, DK, seed=seed + 3)) * 0.4
  beta = 1.0 / (1.0 + np.exp(-rand(B, t, H, seed=seed + 4)))
  return q, k, v, g.astype(np.float32), beta.astype(np.float32)


def naive_recurrence(q, k, v, g=None, beta=None, normalize=False, eps=1e-6, s0=None):
  """Per step: S = diag(exp g) S; u = beta (v - S^T k) (delta) else v; S += k u^T;
  o = S^T q (/ (q . z + eps) with z the same recurrence on v = 1)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, t, h, dk = q.shape
  out = np.zeros(v.shape)
  states = np.zeros((b, h, dk, v.shape[-1])) if s0 is None else np.array(s0, np.float64)
  for bb in range(b):
    for hh in range(h):
      s = states[bb, hh, :, :v.shape[-1]].copy()
      z = states[bb, hh, :, -1].copy() if normalize and s0 is not None else np.zeros(dk)
      for i in range(t):
        if g is not None:
          a = np.exp(np.broadcast_to(np.asarray(g, np.float64)[bb, i, hh], (dk,)))
          s, z = a[:, None] * s, a * z
        u = v[bb, i, hh]
        if beta is not None:
          u = beta[bb, i, hh] * (u - s.T @ k[bb, i, hh])
        s = s + np.outer(k[bb, i, hh], u)
        z = z + k[bb, i, hh]
        o = s.T @ q[bb, i, hh]
        out[bb, i, hh] = o / (q[bb, i, hh] @ z + eps) if normalize else o
      states[bb, hh, :, :v.shape[-1]] = s
  return out


def naive_bidirectional(q, k, v, g):
  """o_i = sum_j w_ij (q_i . k_j) v_j, w_ij = prod over l in (min, max] of exp(g_l) per
  channel."""
  q, k, v, g = (np.asarray(x, np.float64) for x in (q, k, v, g))
  b, t, h, dk = q.shape
  out = np.zeros(v.shape)
  for bb in range(b):
    for hh in range(h):
      for i in range(t):
        for j in range(t):
          lo, hi = min(i, j), max(i, j)
          w = np.exp(g[bb, lo + 1:hi + 1, hh].sum(0)) if hi > lo else np.ones(dk)
          out[bb, i, hh] += np.sum(q[bb, i, hh] * k[bb, j, hh] * w) * v[bb, j, hh]
  return out


FORMS = ("parallel", "chunked", "recurrent")

# (name, kwargs builder): decay variants x delta rule x normaliser.
CASES = {
    "plain": lambda q, k, v, g, beta: dict(),
    "scalar_decay": lambda q, k, v, g, beta: dict(decay=g[..., 0]),
    "head_decay": lambda q, k, v, g, beta: dict(decay=np.array([-0.1, -0.7], np.float32)),
    "channel_decay": lambda q, k, v, g, beta: dict(decay=g),
    "delta": lambda q, k, v, g, beta: dict(beta=beta),
    "gated_delta": lambda q, k, v, g, beta: dict(beta=beta, decay=g[..., 0]),
    "channel_delta": lambda q, k, v, g, beta: dict(beta=beta, decay=g),
    "normalized": lambda q, k, v, g, beta: dict(normalize=True),
    "normalized_decay": lambda q, k, v, g, beta: dict(normalize=True, decay=g[..., 0]),
}


def case_inputs(name, seed=0, t=T):
  q, k, v, g, beta = inputs(seed, t)
  if name.startswith("normalized"):
    q, k = np.asarray(feature_maps.elu1(q)), np.asarray(feature_maps.elu1(k))
  if "delta" in name:  # DeltaNet's l2-normalised keys keep the recurrence contractive
    k = np.asarray(feature_maps.l2(k))
  return q, k, v, CASES[name](q, k, v, g, beta)


def naive_kwargs(kw):
  decay = kw.get("decay")
  if decay is not None and decay.ndim == 1:
    decay = np.broadcast_to(decay[None, None, :], (B, T, H))
  if decay is not None and decay.ndim == 3:
    decay = decay[..., None]
  return dict(g=decay, beta=kw.get("beta"), normalize=kw.get("normalize", False))


# The chunked form (the one the modules run) on every case; the parallel and recurrent forms
# are tied to it by the value-and-gradient test below, and checked here too under -m slow.
NAIVE_CASES = ([(n, "chunked") for n in sorted(CASES)]
               + [pytest.param(n, f, marks=pytest.mark.slow) for n in sorted(CASES)
                  for f in ("parallel", "recurrent")])


@pytest.mark.parametrize("name,form", NAIVE_CASES)
def test_forms_equal_naive_recurrence(name, form):
  q, k, v, kw = case_inputs(name)
  want = naive_recurrence(q, k, v, **naive_kwargs(kw))
  fn = jax.jit(lambda q, k, v: linear_attention(q, k, v, form=form, chunk_size=4, **kw))
  assert_close(fn(q, k, v), want, rtol=1e-4, atol=1e-5)


# Chunk 4 does not divide T=11, 11 equals it, 16 exceeds it (one padded chunk).
GRAD_CASES = [("plain", 4), ("channel_decay", 4), ("gated_delta", 4), ("gated_delta", 16),
              pytest.param("normalized", 4, marks=pytest.mark.slow),
              pytest.param("plain", 11, marks=pytest.mark.slow),
              pytest.param("channel_delta", 4, marks=pytest.mark.slow),
              pytest.param("channel_decay", 16, marks=pytest.mark.slow)]


@pytest.mark.parametrize("name,chunk", GRAD_CASES)
def test_forms_equal_values_and_gradients(name, chunk):
  q, k, v, kw = case_inputs(name, seed=3)
  ct = jnp.asarray(rand(B, T, H, DV, seed=9))
  arrays = {n: jnp.asarray(x) for n, x in kw.items() if isinstance(x, np.ndarray)}
  static = {n: x for n, x in kw.items() if not isinstance(x, np.ndarray)}

  def grads(form):
    def f(q, k, v, arrays):
      out = linear_attention(q, k, v, form=form, chunk_size=chunk, **arrays, **static)
      return jnp.sum(out * ct)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))(q, k, v, arrays)

  ref = grads("parallel")
  for form in ("chunked", "recurrent"):
    got = grads(form)
    chex.assert_trees_all_close(got, ref, rtol=2e-4, atol=2e-5)
    chex.assert_tree_all_finite(got)


@pytest.mark.parametrize("name,form", [("gated_delta", f) for f in FORMS] + [
    pytest.param("normalized", f, marks=pytest.mark.slow) for f in FORMS])
def test_state_carries_across_calls(name, form):
  """Prefix then suffix with the prefix's state == the whole sequence (the decode path)."""
  q, k, v, kw = case_inputs(name, seed=5)
  arrays = {n: x for n, x in kw.items() if isinstance(x, np.ndarray)}
  static = {n: x for n, x in kw.items() if not isinstance(x, np.ndarray)}
  run = jax.jit(lambda q, k, v, arrays, s0: linear_attention(
      q, k, v, form=form, chunk_size=4, initial_state=s0, return_state=True, **arrays,
      **static))
  s_zero = jnp.zeros(state_shape(B, H, DK, DV, kw.get("normalize", False)))
  full, s_full = run(q, k, v, arrays, s_zero)
  cut = 6

  def part(sl, s0):
    return run(q[:, sl], k[:, sl], v[:, sl], {n: x[:, sl] for n, x in arrays.items()}, s0)
  a, s_a = part(slice(0, cut), s_zero)
  assert s_a.shape == state_shape(B, H, DK, DV, kw.get("normalize", False))
  b, s_b = part(slice(cut, T), s_a)
  assert_close(np.concatenate([a, b], axis=1), full, rtol=1e-4, atol=1e-5)
  assert_close(s_b, s_full, rtol=1e-4, atol=1e-5)


def test_step_matches_recurrent_form():
  q, k, v, g, beta = inputs(seed=7)
  kn = np.asarray(feature_maps.l2(k))
  full = linear_attention(q, kn, v, decay=g, beta=beta, form="recurrent")
  s = jnp.zeros(state_shape(B, H, DK, DV))
  for i in range(3):
    o, s = step(s, q[:, i], kn[:, i], v[:, i], decay=g[:, i], beta=beta[:, i])
    assert_close(o, full[:, i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("decay", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_bidirectional_equals_definition(decay):
  q, k, v, g, _ = inputs(seed=11, t=7)
  g = g if decay else np.zeros_like(g)
  want = naive_bidirectional(q, k, v, g)
  for form in FORMS:
    got = jax.jit(lambda q, k, v, g, form=form: linear_attention(
        q, k, v, decay=g if decay else None, causal=False, form=form, chunk_size=3))(q, k, v, g)
    assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_taylor_feature_map_is_second_order_exp():
  x, y = rand(5, 4, seed=1), rand(5, 4, seed=2)
  s = 0.5
  got = np.sum(np.asarray(feature_maps.taylor(x, s)) * np.asarray(feature_maps.taylor(y, s)),
               -1)
  dot = s * np.sum(x.astype(np.float64) * y, -1)
  assert_close(got, 1 + dot + dot ** 2 / 2)


def test_bad_input():
  q, k, v, g, beta = inputs()
  with pytest.raises(ValueError, match="form must be one of"):
    linear_attention(q, k, v, form="fast")
  with pytest.raises(ValueError, match="decay must have shape"):
    linear_attention(q, k, v, decay=g[:, :, :, :2])
  with pytest.raises(ValueError, match="beta must have shape"):
    linear_attention(q, k, v, beta=beta[:, :3])
  with pytest.raises(ValueError, match="normalize=True is not defined"):
    linear_attention(q, k, v, beta=beta, normalize=True)
  with pytest.raises(ValueError, match="causal=False"):
    linear_attention(q, k, v, beta=beta, causal=False)
  with pytest.raises(ValueError, match="q, k must have shape"):
    linear_attention(q, k[:, :, :1], v)
  with pytest.raises(ValueError, match="initial_state must have shape"):
    linear_attention(q, k, v, initial_state=jnp.zeros((B, H, DK, DV + 1)))
  with pytest.raises(ValueError, match="chunk_size must be a positive int"):
    linear_attention(q, k, v, chunk_size=0)


@pytest.mark.parametrize("c", [5, 37])  # padded to 8 and 64 blocks
def test_unit_lower_solve_by_blocks_vs_numpy(c):
  """The WY form's solve (``forms._unit_lower_solve``, block inverse) against numpy's dense
  solve in float64: values, and gradients against ``jnp.linalg.solve`` on the dense matrix.
  The program has no ``triangular_solve`` (jaxlib's CPU LAPACK solve can deadlock when two
  run at once on a small thread pool; see the function's docstring)."""
  from attnlab.core.linear import forms  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(c)
  a = jnp.asarray(np.tril(rng.uniform(-1, 1, (2, c, c)), -1), jnp.float32)
  beta = jnp.asarray(rng.uniform(0, 1, (2, c)), jnp.float32)
  rhs = jnp.asarray(rng.standard_normal((2, c, 3)), jnp.float32)
  m = np.eye(c) + np.asarray(beta, np.float64)[..., None] * np.asarray(a, np.float64)
  want = np.linalg.solve(m, np.asarray(beta, np.float64)[..., None] * np.asarray(rhs, np.float64))
  np.testing.assert_allclose(forms._unit_lower_solve(a, beta, rhs), want, rtol=1e-5, atol=1e-5)

  def dense(a, beta, rhs):
    mat = jnp.eye(c) + beta[..., None] * jnp.tril(a, -1)
    return jnp.linalg.solve(mat, beta[..., None] * rhs)
  loss = lambda f: lambda *x: jnp.sum(jnp.sin(f(*x)))  # noqa: E731
  got = jax.grad(loss(forms._unit_lower_solve), (0, 1, 2))(a, beta, rhs)
  ref = jax.grad(loss(dense), (0, 1, 2))(a, beta, rhs)
  got = (jnp.tril(got[0], -1),) + got[1:]  # only the strictly lower part of `a` is read
  ref = (jnp.tril(ref[0], -1),) + ref[1:]
  for g, r in zip(got, ref):
    np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-5)
  jaxpr = str(jax.make_jaxpr(jax.grad(loss(forms._unit_lower_solve), (0, 1, 2)))(a, beta, rhs))
  assert "triangular_solve" not in jaxpr
