"""Score-mechanism NNX modules: vs naive recomputations from their own parameters, the
paper-level properties at module level, KV-cache decoding, and a tiny DecoderLM per catalogue
entry (forward + grad, finite)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import attnlab
import attnlab.nn.mechanisms_scores as M
from attnlab import models
from attnlab.core.catalogue import scores as catalogue
from attnlab.nn import attention as A
from attnlab.train import steps as steps_lib

from test_scores_core import (naive_deberta, naive_gpsa, naive_momentum,  # noqa: I100
                              naive_out, naive_rcmha, naive_selective, naive_softmax)

E, H, K, D, T, BATCH, VOCAB = 16, 4, 2, 4, 6, 2, 11
call = nnx.jit(lambda m, x: m(x))


def x_input(seed=0, t=T):
  return jnp.asarray(np.random.RandomState(seed).standard_normal((BATCH, t, E)), jnp.float32)


def kernels(mod):
  get = lambda m: None if m is None else np.asarray(m.kernel[...], np.float64)  # noqa: E731
  return get(mod.q), get(mod.k), get(mod.v), get(mod.o)


def project(x, mod):
  wq, wk, wv, _ = kernels(mod)
  x = np.asarray(x, np.float64)
  return (np.einsum("bte,ehd->bthd", x, wq), np.einsum("bte,ehd->bthd", x, wk),
          np.einsum("bte,ehd->bthd", x, wv))


def output(out, mod):
  return np.einsum("bthd,hde->bte", out, kernels(mod)[3])


def randomize(mod, names, seed=1, scale=0.3):
  """Give zero/constant-initialised parameters random values so the test sees them."""
  rng = np.random.RandomState(seed)
  for n in names:
    p = getattr(mod, n)
    p[...] = p[...] + jnp.asarray(rng.standard_normal(p[...].shape) * scale, p[...].dtype)


CAUSAL_T = np.tril(np.ones((T, T), bool))


def check_decode(mod, x, full):
  """KV-cache decoding in chunks of 2 tokens (one compile) reproduces the full forward."""
  mod.init_cache(BATCH, 8)
  step = nnx.jit(lambda m, xs: m(xs, decode=True))
  got = np.concatenate([np.asarray(step(mod, x[:, i:i + 2])) for i in range(0, T, 2)], axis=1)
  np.testing.assert_allclose(got, np.asarray(full), rtol=2e-4, atol=2e-5)


def make(cls, **kw):
  kw.setdefault("num_kv_heads", K)
  kw.setdefault("causal", True)
  return cls(E, H, rngs=nnx.Rngs(0), **kw)


# ---------------------------------------------------------------------------------------------
# Modules vs naive recomputation.


def test_selective_module_vs_naive():
  mod = make(M.SelectiveAttention, mechanism="selective_ssa")
  randomize(mod, ["q_temp", "v_temp", "pos_temp"])
  x = x_input()
  q, k, v = project(x, mod)
  qt = 1 + np.tanh(np.einsum("bthd,hd->bth", q, np.asarray(mod.q_temp[...], np.float64)))
  vt = 1 + np.tanh(np.einsum("bthd,hd->bth", v, np.asarray(mod.v_temp[...], np.float64)))
  s = np.exp(-np.exp(np.asarray(mod.pos_temp[...], np.float64)))
  want = output(naive_selective(np, q, k, v, qt, vt, s, CAUSAL_T), mod)
  full = call(mod, x)
  np.testing.assert_allclose(np.asarray(full), want, rtol=1e-4, atol=1e-5)
  check_decode(mod, x, full)
  # All temperatures off: exactly MultiHeadAttention with the same kernels.
  off = make(M.SelectiveAttention, mechanism="selective_ssa",
             mechanism_kwargs=dict(query_temperature=False, value_temperature=False,
                                   position_temperature=False))
  base = make(A.MultiHeadAttention)
  np.testing.assert_allclose(np.asarray(call(off, x)), np.asarray(call(base, x)), rtol=1e-5,
                             atol=1e-6)
  assert off.q_temp is None and mod.q_temp[...].shape == (H, D)


def test_deberta_module_vs_naive():
  mod = make(M.DebertaAttention, mechanism="deberta", mechanism_kwargs=dict(max_distance=3))
  x = x_input(1)
  q, k, v = project(x, mod)
  p = np.asarray(mod.rel_table[...], np.float64)
  q_r = np.einsum("re,ehd->rhd", p, np.asarray(mod.q_rel[...], np.float64))
  k_r = np.einsum("re,ehd->rhd", p, np.asarray(mod.k_rel[...], np.float64))
  want = output(naive_deberta(np, q, k, v, q_r, k_r, 3, CAUSAL_T, 0), mod)
  full = call(mod, x)
  np.testing.assert_allclose(np.asarray(full), want, rtol=1e-4, atol=1e-5)
  check_decode(mod, x, full)
  assert mod.rel_table[...].shape == (6, E)


def test_rcmha_conv_is_causal_and_module_vs_naive():
  rng = np.random.RandomState(2)
  xs = rng.standard_normal((BATCH, T, H, D)).astype(np.float32)
  ker = rng.standard_normal((3, H, D)).astype(np.float32)
  got = np.asarray(jax.jit(M.causal_depthwise_conv)(xs, ker))
  want = np.zeros_like(got)
  for t in range(T):
    for s in range(3):
      src = t - 2 + s
      if src >= 0:
        want[:, t] += ker[s] * xs[:, src]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  mod = make(M.RCMHAttention, mechanism="rcmha", mechanism_kwargs=dict(max_distance=3))
  randomize(mod, ["conv_q", "conv_k", "conv_v", "u", "w"], seed=3)
  x = x_input(2)
  raw = project(x, mod)
  conv = [np.asarray(M.causal_depthwise_conv(jnp.asarray(r, jnp.float32), c[...]), np.float64)
          for r, c in zip(raw, (mod.conv_q, mod.conv_k, mod.conv_v))]
  r = np.asarray(mod.relative_table(), np.float64)
  want = output(naive_rcmha(np, *conv, r, np.asarray(mod.u[...], np.float64),
                            np.asarray(mod.w[...], np.float64), 3, CAUSAL_T, 0), mod)
  full = call(mod, x)
  np.testing.assert_allclose(np.asarray(full), want, rtol=1e-4, atol=1e-5)
  check_decode(mod, x, full)  # the convolution state carries across chunks
  # Causal: changing the last token changes no earlier output.
  x2 = x.at[:, -1].add(1.0)
  np.testing.assert_allclose(np.asarray(call(mod, x2))[:, :-1], np.asarray(call(mod, x))[:, :-1],
                             rtol=1e-5, atol=1e-6)


def test_complexformer_module_at_init_is_rope_attention():
  """The module's phase adaptation starts at its RoPE setting (a=1, b=0, s=1): same output as
  MultiHeadAttention(position="rope") with the same kernels."""
  mod = make(M.ComplexFormerAttention, mechanism="complexformer")
  rope = make(A.MultiHeadAttention, position="rope")
  for name in "qkvo":
    getattr(rope, name).kernel[...] = getattr(mod, name).kernel[...]
  x = x_input(3)
  full = call(mod, x)
  np.testing.assert_allclose(np.asarray(full), np.asarray(call(rope, x)), rtol=1e-4, atol=1e-5)
  randomize(mod, ["phase_scale", "phase_bias", "pos_scale"], seed=4, scale=0.2)
  check_decode(mod, x, call(mod, x))
  with pytest.raises(ValueError, match="rope"):
    make(M.ComplexFormerAttention, mechanism="complexformer", position="rope")


def test_gpsa_module_vs_naive_and_locality_init():
  mod = make(M.GPSAttention, mechanism="gpsa", mechanism_kwargs=dict(locality_strength=2.0))
  np.testing.assert_allclose(np.asarray(mod.pos_weights[...]),
                             [[-2.0, -0.0], [-2.0, -4.0], [-2.0, -8.0], [-2.0, -12.0]])
  np.testing.assert_allclose(np.asarray(mod.gate[...]), 1.0)
  x = x_input(4)
  q, k, v = project(x, mod)
  want = output(naive_gpsa(np, q, k, v, np.asarray(mod.pos_weights[...], np.float64),
                           np.asarray(mod.gate[...], np.float64), CAUSAL_T, 0), mod)
  full = call(mod, x)
  np.testing.assert_allclose(np.asarray(full), want, rtol=1e-4, atol=1e-5)
  check_decode(mod, x, full)


def test_momentum_through_multihead_attention():
  mod = make(A.MultiHeadAttention, mechanism="momentum_ema",
             mechanism_kwargs=dict(momentum=0.5, eta=0.3))
  x = x_input(5)
  q, k, v = project(x, mod)
  want = output(naive_momentum(np, q, k, v, 0.5, 0.3, CAUSAL_T, 0), mod)
  full = call(mod, x)
  np.testing.assert_allclose(np.asarray(full), want, rtol=1e-4, atol=1e-5)
  check_decode(mod, x, full)


def test_random_qk_module_vs_naive_and_frozen():
  mod = make(M.RandomQKAttention, mechanism="random_qk", mechanism_kwargs=dict(qk_mean=0.5))
  assert mod.q is None and mod.k is None
  assert isinstance(mod.qk_matrix, M.FrozenRandom)
  assert not isinstance(mod.qk_matrix, nnx.Param)
  x = x_input(6)
  xn = np.asarray(x, np.float64)
  w = np.asarray(mod.qk_matrix[...], np.float64)
  _, _, wv, _ = kernels(mod)
  v = np.einsum("bte,ehd->bthd", xn, wv)
  logits = np.einsum("bie,hef,bjf->bhij", xn, w, xn) / math.sqrt(E)
  want = output(naive_out(np, naive_softmax(np, logits, CAUSAL_T), v, H), mod)
  full = call(mod, x)
  np.testing.assert_allclose(np.asarray(full), want, rtol=1e-4, atol=1e-5)
  check_decode(mod, x, full)  # key cache holds the inputs: [B, S, 1, E]
  assert mod.cached_key[...].shape == (BATCH, 8, 1, E)
  # Mean of W is qk_mean * I (up to sampling noise over E^2 entries).
  assert abs(np.mean(np.diagonal(w, axis1=1, axis2=2)) - 0.5) < 0.2

  # An optimizer over nnx.Param (what attnlab.train builds) never touches W; values move.
  w0, v0 = np.asarray(mod.qk_matrix[...]), np.asarray(mod.v.kernel[...])
  opt = nnx.Optimizer(mod, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(m, o, x):
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(m)
    o.update(m, grads)

  for _ in range(2):
    step(mod, opt, x)
  np.testing.assert_array_equal(np.asarray(mod.qk_matrix[...]), w0)
  assert not np.allclose(np.asarray(mod.v.kernel[...]), v0)
  # The trainer's split puts W in model_state, not in params.
  _, params, _, rest = steps_lib.split_model(mod)
  assert "qk_matrix" in rest and "qk_matrix" not in params
  assert "q" not in params and "k" not in params and "v" in params


def test_crate_q_equals_k_equals_v():
  mod = make(M.CRATEAttention, mechanism="crate", num_kv_heads=None, position="learned")
  assert mod.k is None and mod.v is None
  x = x_input(7)
  q, k, v = jax.jit(lambda x: mod.project_qkv(x))(x)
  u = np.asarray(mod.q.kernel[...], np.float64)
  want = np.einsum("bte,ehd->bthd", np.asarray(x, np.float64), u)
  for a in (q, k, v):
    np.testing.assert_allclose(np.asarray(a), want, rtol=1e-5, atol=1e-5)
  s = np.einsum("bihd,bjhd->bhij", want, want) / math.sqrt(D)
  want_out = output(naive_out(np, naive_softmax(np, s, CAUSAL_T), want, H), mod)
  full = call(mod, x)
  np.testing.assert_allclose(np.asarray(full), want_out, rtol=1e-4, atol=1e-5)
  check_decode(mod, x, full)
  with pytest.raises(ValueError, match="num_kv_heads"):
    make(M.CRATEAttention, mechanism="crate", position="learned")
  with pytest.raises(ValueError, match="rope"):
    make(M.CRATEAttention, mechanism="crate", num_kv_heads=None, position="rope")


# ---------------------------------------------------------------------------------------------
# Tiny DecoderLM per catalogue entry: config overrides, forward + grad, KV-cache decoding.


def model_config(name):
  cfg = models.default_model_config()
  cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.mlp_dim, cfg.max_len = 1, E, H, 32, 16
  cfg.num_kv_heads = None if name == "crate" else K
  for key, val in catalogue.ENTRIES[name]["config"].items():
    assert key.startswith("model."), key
    node, *path = key.split(".")[1:]
    parent = cfg
    parts = [node, *path]
    for p in parts[:-1]:
      parent = parent[p]
    parent[parts[-1]] = val
  return cfg


@pytest.mark.parametrize("name", sorted(catalogue.ENTRIES))
def test_decoder_lm_forward_grad(name):
  """The catalogue overrides build a DecoderLM whose blocks use the mechanism's module; one
  forward + backward is finite with a non-zero gradient. (KV-cache decoding is checked per
  module above.)"""
  model = models.build_model(model_config(name), vocab_size=VOCAB, rngs=nnx.Rngs(0))
  expected = {"momentum_ema": A.MultiHeadAttention}.get(name, M.MODULES.get(name))
  assert type(model.stack.blocks[0].attention) is expected
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, VOCAB, (BATCH, T)), jnp.int32)

  @nnx.jit
  def loss_and_grad(m, tokens):
    def loss(m):
      logits = m(tokens)
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, tokens))
    return nnx.value_and_grad(loss)(m)

  loss, grads = loss_and_grad(model, tokens)
  leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
  assert np.isfinite(float(loss)) and leaves
  assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
  assert any(np.any(np.asarray(g) != 0) for g in leaves)


def test_registered_and_configs_validated():
  names = set(A.list_attention_mechanisms())
  assert set(catalogue.ENTRIES) <= names
  for name, cls in M.MODULES.items():
    assert A.get_attention_module(name) is cls
  cfg = model_config("deberta")
  cfg.attention.kwargs.max_distance = 0
  with pytest.raises(ValueError, match="max_distance"):
    models.build_model(cfg, vocab_size=VOCAB, rngs=nnx.Rngs(0))
  cfg = model_config("selective_ssa")
  cfg.attention.kwargs.bogus = 1
  with pytest.raises(ValueError, match="bogus"):
    models.build_model(cfg, vocab_size=VOCAB, rngs=nnx.Rngs(0))
  cfg = model_config("complexformer")
  cfg.position = "rope"
  with pytest.raises(ValueError, match="rope"):
    models.validate_model_config(cfg)
  assert attnlab.get_mechanism("momentum_ema").kind == "attention"
