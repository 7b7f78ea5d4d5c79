"""``attnlab.dot_product_attention`` is a drop-in for ``jax.nn.dot_product_attention``.

The expected values come from ``jax.nn.dot_product_attention`` itself (JAX's XLA path), with
the same arguments; every attnlab implementation that takes the call must agree with it.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab

B, T, S, N, K, H = 2, 12, 16, 4, 2, 16
TOL = dict(rtol=1e-5, atol=1e-5)  # float32, "highest" matmul precision (tests/conftest.py)


def inputs(seed=0, t=T, s=S):
  ks = jax.random.split(jax.random.PRNGKey(seed), 5)
  q = jax.random.normal(ks[0], (B, t, N, H))
  k = jax.random.normal(ks[1], (B, s, K, H))
  v = jax.random.normal(ks[2], (B, s, K, H))
  bias = jax.random.normal(ks[3], (B, N, t, s))
  return q, k, v, bias, ks[4]


CASES = {
    "plain": dict(),
    "causal": dict(is_causal=True),
    "scale": dict(scale=0.3),
    "bias": dict(bias="full"),
    "head_broadcast_bias": dict(bias="1n"),
    "mask_no_heads": dict(mask="b1"),
    "per_head_mask": dict(mask="bn"),
    "kv_lengths": dict(key_value_seq_lengths=np.array([5, 16], np.int32)),
    "q_and_kv_lengths": dict(query_seq_lengths=np.array([7, 12], np.int32),
                             key_value_seq_lengths=np.array([16, 9], np.int32)),
    "window_pair": dict(local_window_size=(3, 2)),
    "window_int": dict(local_window_size=4, is_causal=True),
}


def resolve(case, bias, key, t=T, s=S):
  kw = dict(case)
  if kw.get("bias") == "full":
    kw["bias"] = bias
  elif kw.get("bias") == "1n":
    kw["bias"] = bias[:1, :, :, :]
  if "mask" in kw:
    shape = (B, 1, t, s) if kw["mask"] == "b1" else (B, N, t, s)
    m = jax.random.bernoulli(key, 0.7, shape)
    kw["mask"] = m.at[..., 0].set(True)  # no fully hidden row (see the departure below)
  return kw


@pytest.mark.parametrize("implementation", ["xla", "chunked", None])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_jax_nn(name, implementation):
  q, k, v, bias, key = inputs()
  kw = resolve(CASES[name], bias, key)
  want = jax.nn.dot_product_attention(q, k, v, **kw)
  try:
    got = jax.jit(lambda q, k, v: attnlab.dot_product_attention(
        q, k, v, implementation=implementation, **kw))(q, k, v)
  except ValueError as e:  # an implementation may refuse a call; it must say why
    assert implementation is not None and implementation in str(e), e
    return
  chex.assert_shape(got, want.shape)
  chex.assert_trees_all_close(got, want, **TOL)


def test_gradients_match_jax_nn():
  q, k, v, bias, _ = inputs(1)
  kw = dict(bias=bias, is_causal=True, key_value_seq_lengths=np.array([10, 16], np.int32))

  def loss(fn):
    return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, **kw)))

  want = jax.grad(loss(jax.nn.dot_product_attention), argnums=(0, 1, 2))(q, k, v)
  for impl in ("xla", "chunked"):
    got = jax.grad(loss(lambda *a, **k2: attnlab.dot_product_attention(
        *a, implementation=impl, **k2)), argnums=(0, 1, 2))(q, k, v)
    chex.assert_trees_all_close(got, want, **TOL)


def test_unbatched_inputs():
  q, k, v, bias, _ = inputs(2)
  want = jax.nn.dot_product_attention(q[0], k[0], v[0], bias[0], is_causal=True)
  got = attnlab.dot_product_attention(q[0], k[0], v[0], bias[0], is_causal=True)
  chex.assert_shape(got, (T, N, H))
  chex.assert_trees_all_close(got, want, **TOL)


def test_sigmoid_mechanism_and_residual():
  q, k, v, _, _ = inputs(3)
  out = attnlab.dot_product_attention(q, k, v, mechanism="sigmoid", sigmoid_bias=-2.0)
  want = attnlab.attention(q, k, v, mechanism="sigmoid", sigmoid_bias=-2.0,
                           implementation="xla")
  chex.assert_trees_all_close(out, want, **TOL)
  got, lse = attnlab.dot_product_attention(q, k, v, return_residual=True)
  want, want_lse = jax.nn.dot_product_attention(q, k, v, return_residual=True)
  chex.assert_trees_all_close((got, lse), (want, want_lse), **TOL)


def test_fully_masked_rows_return_zeros():
  # Departure (documented): jax.nn averages all values over a fully masked row; attnlab
  # returns zeros, as every attnlab implementation does.
  q, k, v, _, _ = inputs(4)
  mask = jnp.ones((B, 1, T, S), bool).at[:, :, 3, :].set(False)
  got = attnlab.dot_product_attention(q, k, v, mask=mask)
  chex.assert_trees_all_close(got[:, 3], jnp.zeros_like(got[:, 3]))
  want = jax.nn.dot_product_attention(q, k, v, mask=mask)
  rows = np.r_[0:3, 4:T]
  chex.assert_trees_all_close(got[:, rows], want[:, rows], **TOL)


@pytest.mark.parametrize("kw,err,match", [
    (dict(mask=jnp.ones((T, S))), ValueError, "mask must be 4-d"),
    (dict(mask=jnp.ones((B, 1, T, S), jnp.float32)), TypeError, "boolean"),
    (dict(bias=jnp.ones((T, S))), ValueError, "bias must be 4-d"),
    (dict(local_window_size=(-1, 2)), ValueError, "local_window_size"),
    (dict(local_window_size="wide"), ValueError, "local_window_size"),
    (dict(mechanism="sigmoid", implementation="cudnn"), ValueError, "softmax only"),
])
def test_bad_arguments(kw, err, match):
  q, k, v, _, _ = inputs(5)
  with pytest.raises(err, match=match):
    attnlab.dot_product_attention(q, k, v, **kw)


# ---------------------------------------------------------------------------------------------
# attnlab.attention takes the same inputs (bool arrays, any broadcastable bias, unbatched,
# jax.nn's keywords); expected values again from jax.nn.dot_product_attention.


@pytest.mark.parametrize("implementation", ["xla", "chunked"])
def test_attention_takes_jax_nn_inputs(implementation):
  q, k, v, bias, key = inputs(6)
  bias2d = bias[0, 0]  # [T, S]
  head_mask = jax.random.bernoulli(key, 0.7, (B, N, T, S)).at[..., 0].set(True)
  plain_mask = head_mask[:, :1]
  lengths = np.array([9, 16], np.int32)
  for kw_ours, kw_jax in (
      (dict(bias=bias2d), dict(bias=bias2d[None, None])),
      (dict(mask=head_mask), dict(mask=head_mask)),
      (dict(mask=plain_mask[0, 0]), dict(mask=plain_mask[:1])),  # [T, S] (numpy broadcasting)
      # (4, 3): every query keeps a visible key (no fully masked row: see the departure)
      (dict(key_value_seq_lengths=lengths, local_window_size=(4, 3)),
       dict(key_value_seq_lengths=lengths, local_window_size=(4, 3))),
  ):
    want = jax.nn.dot_product_attention(q, k, v, **kw_jax)
    try:
      got = attnlab.attention(q, k, v, implementation=implementation, **kw_ours)
    except ValueError as e:
      assert implementation in str(e), e
      continue
    chex.assert_trees_all_close(got, want, **TOL)
  got = attnlab.attention(q[0], k[0], v[0], is_causal=True, implementation=implementation)
  chex.assert_shape(got, (T, N, H))
  chex.assert_trees_all_close(got, jax.nn.dot_product_attention(q[0], k[0], v[0],
                                                                is_causal=True), **TOL)


@pytest.mark.parametrize("kw,err,match", [
    (dict(mask=jnp.ones((T, S), jnp.float32)), TypeError, "boolean array"),
    (dict(mask=jnp.ones((B, N, T + 1, S), bool)), ValueError, "must broadcast"),
    (dict(bias=jnp.ones((T, S + 1))), ValueError, "bias must broadcast"),
    (dict(local_window_size=-2), ValueError, "local_window_size"),
])
def test_attention_rejects_bad_jax_nn_inputs(kw, err, match):
  q, k, v, _, _ = inputs(7)
  with pytest.raises(err, match=match):
    attnlab.attention(q, k, v, **kw)


@pytest.mark.parametrize("implementation", ["xla", "chunked"])
def test_per_head_array_mask(implementation):
  from attnlab import masks
  q, k, v, _, key = inputs(8)
  m = jax.random.bernoulli(key, 0.6, (B, N, T, S)).at[..., 0].set(True)
  want = jax.nn.dot_product_attention(q, k, v, mask=m)
  got = attnlab.attention(q, k, v, mask=masks.ArrayMask(m), implementation=implementation)
  chex.assert_trees_all_close(got, want, **TOL)
  with pytest.raises(ValueError, match="whole mask="):
    attnlab.attention(q, k, v, mask=masks.ArrayMask(m) & masks.CausalMask(),
                      implementation=implementation)
