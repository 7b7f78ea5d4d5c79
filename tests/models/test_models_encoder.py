"""EncoderClassifier: padding invariance, pooling, analysis inputs."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnlab.models import build_model, default_model_config

V, L, H, T, B, C = 32, 2, 4, 8, 2, 3


def tiny_model(**kw):
  cfg = default_model_config()
  cfg.update(dict(name="encoder_classifier", num_layers=L, d_model=16, num_heads=H,
                  num_kv_heads=2, mlp_dim=32, max_len=16, num_classes=C))
  cfg.update(kw)
  return build_model(cfg, vocab_size=V, rngs=nnx.Rngs(0))


@functools.partial(nnx.jit, static_argnames=("record_weights_layers",))
def fwd(m, toks, *, lengths=None, weights=None, head_masks=None, record_weights_layers=()):
  return m(toks, lengths=lengths, weights=weights, head_masks=head_masks,
           record_weights_layers=record_weights_layers)


def tokens(seed=0):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, V)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padded_tokens_do_not_change_logits(pooling):
  m = tiny_model(pooling=pooling)
  a = tokens()
  lengths = jnp.array([5, 8])
  b = a.at[0, 5:].set((a[0, 5:] + 7) % V)  # change only row 0's padding
  la, lb = fwd(m, a, lengths=lengths), fwd(m, b, lengths=lengths)
  chex.assert_shape(la, (B, C))
  assert la.dtype == jnp.float32
  chex.assert_trees_all_close(la, lb, rtol=1e-7, atol=1e-5)
  # The same through a weights mask; and the padding really is masked (no mask: differs).
  w = (jnp.arange(T)[None] < lengths[:, None]).astype(jnp.float32)
  chex.assert_trees_all_close(fwd(m, a, weights=w), la, rtol=1e-7, atol=1e-5)
  chex.assert_trees_all_close(fwd(m, b, weights=w), la, rtol=1e-7, atol=1e-5)
  assert not np.allclose(fwd(m, a)[0], fwd(m, b)[0])


def test_padding_equals_unpadded_sequence():
  m = tiny_model(position="learned")
  a = tokens()
  padded = fwd(m, a, lengths=jnp.array([5, 8]))
  alone = m(a[:1, :5])
  chex.assert_trees_all_close(padded[0], alone[0], rtol=1e-7, atol=1e-5)


def test_bidirectional_and_recorded_weights():
  m = tiny_model()
  a = tokens()
  b = a.at[:, -1].set((a[:, -1] + 1) % V)
  # An encoder sees the future: changing the last token changes the logits.
  assert not np.allclose(fwd(m, a), fwd(m, b))
  logits, rec = fwd(m, a, lengths=jnp.array([5, 8]), record_weights_layers=(0,))
  w = rec[0]
  chex.assert_shape(w, (B, H, T, T))
  chex.assert_trees_all_equal(w[0, :, :, 5:], 0.0)  # padded keys get no weight
  chex.assert_trees_all_close(w[1].sum(-1), 1.0, rtol=1e-7, atol=1e-5)
  # Head masks are traced inputs here too.
  masked = fwd(m, a, head_masks=jnp.ones((L, H)).at[0, 0].set(0.0))
  assert not np.allclose(masked, fwd(m, a, head_masks=jnp.ones((L, H))))


def test_bad_inputs():
  m = tiny_model()
  with pytest.raises(ValueError, match="at most one of lengths and weights"):
    m(tokens(), lengths=jnp.array([1, 2]), weights=jnp.ones((B, T)))
  with pytest.raises(ValueError, match=r"lengths must be an int array of shape \[batch\]"):
    m(tokens(), lengths=jnp.array([1, 2, 3]))
