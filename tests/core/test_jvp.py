"""Forward-mode autodiff with implementation="auto": the custom_vjp paths refuse JVP tracers.

"chunked" and "pallas" are ``jax.custom_vjp`` functions, which ``jax.jvp`` cannot
differentiate; their ``supports`` refuses JVP-traced inputs so "auto" picks "xla".
``AUTO_DENSE_LIMIT_BYTES = 0`` makes "auto" prefer "chunked" at these small shapes.
"""

import chex
import jax
import jax.numpy as jnp
import pytest

import attnlab
from attnlab.core import api
from attnlab.kernels.flash import support


def _qkv(shape=(1, 32, 2, 8), seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(kk, shape, jnp.float32) for kk in ks)


def _auto(q, k, v):
  return attnlab.attention(q, k, v, is_causal=True, implementation="auto")


def _reference(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True)


@pytest.fixture
def prefer_chunked(monkeypatch):
  monkeypatch.setattr(api, "AUTO_DENSE_LIMIT_BYTES", 0)


def test_auto_would_pick_chunked(prefer_chunked):
  q, k, v = _qkv()
  assert api.choose_implementation("softmax", "auto", q=q, k=k, v=v) == "chunked"
  picked = []

  def f(q):
    picked.append(api.choose_implementation("softmax", "auto", q=q, k=k, v=v))
    return q
  jax.jvp(f, (q,), (q,))
  assert picked == ["xla"]


def test_jvp_auto_equals_reference(prefer_chunked):
  primals, tangents = _qkv(), _qkv(seed=1)
  out, tan = jax.jvp(_auto, primals, tangents)
  ref_out, ref_tan = jax.jvp(_reference, primals, tangents)
  chex.assert_trees_all_close((out, tan), (ref_out, ref_tan), atol=1e-5, rtol=1e-5)


def test_jvp_of_vmap_auto(prefer_chunked):
  primals, tangents = _qkv((3, 1, 16, 2, 8)), _qkv((3, 1, 16, 2, 8), seed=1)
  got = jax.jvp(jax.vmap(_auto), primals, tangents)
  want = jax.jvp(jax.vmap(_reference), primals, tangents)
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


def test_jacfwd_auto(prefer_chunked):
  q, k, v = _qkv((1, 8, 1, 4))
  got = jax.jacfwd(_auto, argnums=(0, 1, 2))(q, k, v)
  want = jax.jacrev(_reference, argnums=(0, 1, 2))(q, k, v)
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


def test_linearize_auto():
  # At sizes where "auto" picks "xla". jax.linearize is traced exactly like jax.grad, so where
  # "auto" picks a custom_vjp implementation it cannot be refused (see chunked.py).
  primals, tangents = _qkv(), _qkv(seed=1)
  out, lin = jax.linearize(_auto, *primals)
  ref_out, ref_tan = jax.jvp(_reference, primals, tangents)
  chex.assert_trees_all_close((out, lin(*tangents)), (ref_out, ref_tan), atol=1e-5, rtol=1e-5)


def test_grad_auto_still_uses_chunked(prefer_chunked):
  q, k, v = _qkv()
  picked = []

  def f(q):
    picked.append(api.choose_implementation("softmax", "auto", q=q, k=k, v=v))
    return _auto(q, k, v).sum()
  g = jax.grad(f)(q)
  assert picked == ["chunked"]
  chex.assert_trees_all_close(g, jax.grad(lambda q: _reference(q, k, v).sum())(q), atol=1e-5)


@pytest.mark.parametrize("mechanism", ["softmax", "sigmoid"])
def test_explicit_chunked_under_jvp_raises(mechanism):
  primals = _qkv()
  f = lambda q, k, v: attnlab.attention(q, k, v, mechanism=mechanism, implementation="chunked")
  with pytest.raises(ValueError, match=r"forward-mode autodiff \(jax.jvp\).*implementation='xla'"):
    jax.jvp(f, primals, primals)


def test_pallas_refuses_jvp():
  q, k, v = _qkv((1, 32, 2, 64))
  assert support.unsupported_reason(q=q, k=k, v=v, interpret=True) is None
  reasons = []
  jax.jvp(lambda q: reasons.append(support.unsupported_reason(q=q, k=k, v=v, interpret=True))
          or q, (q,), (q,))
  assert reasons and "jax.jvp" in reasons[0]
