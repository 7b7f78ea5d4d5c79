"""RoPE, sinusoidal and learned position embeddings vs independent formulas."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnlab.nn import positions as P
from attnlab.nn.partitioning import logical_axes


def rope_complex(x, pos, base=10000.0):
  """RoFormer's complex form: (x_i + j x_{i+D/2}) * exp(j * pos * base^(-2i/D)), by loops."""
  x = np.asarray(x, np.float64)
  b, t, h, d = x.shape
  out = np.zeros_like(x)
  for bi in range(b):
    for ti in range(t):
      p = pos[bi, ti] if np.ndim(pos) == 2 else pos[ti]
      for i in range(d // 2):
        theta = base ** (-2.0 * i / d)
        z = (x[bi, ti, :, i] + 1j * x[bi, ti, :, i + d // 2]) * np.exp(1j * p * theta)
        out[bi, ti, :, i], out[bi, ti, :, i + d // 2] = z.real, z.imag
  return out


def test_rope_matches_complex_rotation_loop():
  x = jax.random.normal(jax.random.key(0), (2, 5, 3, 8))
  pos = np.array([[0, 1, 2, 3, 4], [7, 3, 100, 0, 5]])
  rope = jax.jit(P.apply_rope)
  chex.assert_trees_all_close(rope(x, pos), rope_complex(x, pos), rtol=1e-7, atol=2e-5)
  # [T] positions broadcast over the batch.
  chex.assert_trees_all_close(rope(x, pos[0]), rope_complex(x, pos[0]), rtol=1e-7, atol=2e-5)


def test_rope_dot_product_depends_only_on_offset():
  kq, kk = jax.random.split(jax.random.key(1))
  q = jax.random.normal(kq, (1, 1, 1, 16))
  k = jax.random.normal(kk, (1, 1, 1, 16))

  @jax.jit
  def _score(m, n):
    return jnp.sum(P.apply_rope(q, m[None]) * P.apply_rope(k, n[None]))

  def score(m, n):
    return float(_score(jnp.int32(m), jnp.int32(n)))

  for m, n in [(3, 1), (10, 2), (0, 7)]:
    for shift in (1, 5, 40):
      assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=1e-4)
  assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
  # Norm preserved (a rotation).
  chex.assert_trees_all_close(jnp.linalg.norm(P.apply_rope(q, jnp.array([9]))),
                              jnp.linalg.norm(q), rtol=1e-5)


def test_rope_keeps_dtype_and_checks_shapes():
  x = jnp.ones((1, 4, 2, 8), jnp.bfloat16)
  chex.assert_type(P.apply_rope(x, jnp.arange(4)), jnp.bfloat16)
  with pytest.raises(ValueError, match="positions must have shape"):
    P.apply_rope(x, jnp.arange(5))
  with pytest.raises(ValueError, match="even head_dim"):
    P.apply_rope(jnp.ones((1, 4, 2, 7)), jnp.arange(4))
  with pytest.raises(TypeError, match="integer"):
    P.apply_rope(x, jnp.arange(4.0))
  with pytest.raises(ValueError, match=r"\[batch, length, heads, head_dim\]"):
    P.apply_rope(jnp.ones((4, 8)), jnp.arange(4))


def test_sinusoidal_matches_formula():
  pos = np.arange(6)
  d = 8
  got = np.asarray(P.sinusoidal_embedding(pos, d))[0]
  for p in pos:
    for i in range(d // 2):
      w = 1.0 / 10000 ** (2 * i / d)
      assert got[p, i] == pytest.approx(np.sin(p * w), abs=1e-5)
      assert got[p, i + d // 2] == pytest.approx(np.cos(p * w), abs=1e-5)


def test_learned_position_embedding():
  emb = P.LearnedPositionEmbedding(10, 4, rngs=nnx.Rngs(0))
  assert logical_axes(emb.embed.embedding) == ("position", "embed")
  out = emb(jnp.array([[0, 3], [9, 1]]))
  chex.assert_shape(out, (2, 2, 4))
  chex.assert_trees_all_equal(out[1, 0], emb.embed.embedding[...][9])
  chex.assert_shape(emb(jnp.arange(3)), (1, 3, 4))


def test_alibi_slopes_reexported():
  chex.assert_trees_all_close(P.alibi_slopes(4), np.asarray([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]),
                              rtol=1e-7)
