"""Causal LMs must not depend on the future: KV-cache decoding equals the full pass and
appending tokens leaves earlier logits unchanged, for every position scheme, with softmax and
sigmoid attention (sigmoid's bias is fixed from max_len at construction)."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnlab import masks
from attnlab.models import build_model, default_model_config
from attnlab.nn import attention as A

V, L, H, B, MAX_LEN = 32, 2, 4, 2, 16
E, T = 16, 12


def tiny_model(position, mechanism):
  cfg = default_model_config()
  cfg.update(dict(num_layers=L, d_model=E, num_heads=H, num_kv_heads=2, mlp_dim=32,
                  max_len=MAX_LEN, position=position))
  cfg.attention.mechanism = mechanism
  return build_model(cfg, vocab_size=V, rngs=nnx.Rngs(0))


@nnx.jit
def full_pass(m, toks):
  return m(toks)


@nnx.jit
def decode_step(m, toks):
  return m(toks, decode=True)


def tokens(seed=0, t=T):
  return jax.random.randint(jax.random.key(seed), (B, t), 0, V)


@pytest.mark.parametrize("mechanism", ["softmax", "sigmoid"])
@pytest.mark.parametrize("position", ["rope", "learned", "sinusoidal", "alibi", "none"])
def test_decode_matches_full_pass_and_prefix_is_stable(position, mechanism):
  m = tiny_model(position, mechanism)
  attn = m.stack.blocks[0].attention
  assert attn.max_len == MAX_LEN  # passed by the builder
  if mechanism == "sigmoid":
    assert dict(attn.core_kwargs)["sigmoid_bias"] == pytest.approx(-math.log(MAX_LEN))
  toks = tokens()
  full = full_pass(m, toks)
  # Token-by-token decoding with the KV cache (keys: the whole cache of MAX_LEN slots).
  m.init_cache(B, MAX_LEN)
  steps = [decode_step(m, toks[:, i:i + 1]) for i in range(T)]
  chex.assert_trees_all_close(jnp.concatenate(steps, axis=1), full, rtol=0, atol=1e-5)
  # Appending 6 tokens does not change the logits of the first 6.
  prefix = full_pass(m, toks[:, :6])
  chex.assert_trees_all_close(prefix, full[:, :6], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Module level, against a naive numpy reference.


def naive_sigmoid(mod, x, bias_value, kv_len=None):
  """Causal sigmoid attention in float64 from the module's kernels (no positions)."""
  x = np.asarray(x, np.float64)
  wq, wk, wv, wo = (np.asarray(p.kernel[...], np.float64) for p in (mod.q, mod.k, mod.v, mod.o))
  q = np.einsum("bte,ehd->bthd", x, wq)
  k = np.einsum("bte,ehd->bthd", x, wk)
  v = np.einsum("bte,ehd->bthd", x, wv)
  t = x.shape[1]
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
  p = 1 / (1 + np.exp(-(s + bias_value)))
  p = np.where(np.tril(np.ones((t, t), bool)), p, 0.0)
  return np.einsum("bqhd,hde->bqe", np.einsum("bhqk,bkhd->bqhd", p, v), wo)


def sigmoid_module(**kw):
  return A.MultiHeadAttention(E, H, mechanism="sigmoid", causal=True, rngs=nnx.Rngs(0), **kw)


def test_module_sigmoid_bias_fixed_by_max_len_matches_naive_in_every_mode():
  mod = sigmoid_module(max_len=MAX_LEN)
  x = jax.random.normal(jax.random.key(1), (B, 8, E))
  want = naive_sigmoid(mod, x, -math.log(MAX_LEN))
  chex.assert_trees_all_close(mod(x), want, rtol=0, atol=2e-5)
  # Padding keys (masked) do not change the outputs of the real tokens.
  xp = jnp.concatenate([x, jnp.zeros((B, 5, E))], axis=1)
  got = mod(xp, mask=masks.ValidLengthMask(kv_lengths=jnp.full((B,), 8)))
  chex.assert_trees_all_close(got[:, :8], want, rtol=0, atol=2e-5)
  # Decoding against a cache of 11 slots.
  mod.init_cache(B, 11)
  steps = [mod(x[:, :3], decode=True)] + [mod(x[:, i:i + 1], decode=True) for i in range(3, 8)]
  chex.assert_trees_all_close(jnp.concatenate(steps, axis=1), want, rtol=0, atol=2e-5)


def test_explicit_sigmoid_bias_wins_and_none_max_len_falls_back_to_key_length():
  mod = sigmoid_module(max_len=MAX_LEN, mechanism_kwargs={"sigmoid_bias": -1.5})
  assert dict(mod.core_kwargs) == {"sigmoid_bias": -1.5}
  x = jax.random.normal(jax.random.key(2), (B, 8, E))
  chex.assert_trees_all_close(mod(x), naive_sigmoid(mod, x, -1.5), rtol=0, atol=2e-5)
  # max_len=None: b = -log(kv_len) of each call, so the cache size changes the outputs.
  mod = sigmoid_module()
  assert "sigmoid_bias" not in dict(mod.core_kwargs)
  chex.assert_trees_all_close(mod(x), naive_sigmoid(mod, x, -math.log(8)), rtol=0, atol=2e-5)
  mod.init_cache(B, 11)
  dec = mod(x, decode=True)
  chex.assert_trees_all_close(dec, naive_sigmoid(mod, x, -math.log(11)), rtol=0, atol=2e-5)


def test_softmax_ignores_max_len():
  mod = A.MultiHeadAttention(E, H, causal=True, max_len=MAX_LEN, rngs=nnx.Rngs(0))
  assert dict(mod.core_kwargs) == {}
  with pytest.raises(ValueError, match="max_len"):
    A.MultiHeadAttention(E, H, max_len=0, rngs=nnx.Rngs(0))
  assert "max_len" in A.accepted_arguments(A.MultiHeadAttention)
