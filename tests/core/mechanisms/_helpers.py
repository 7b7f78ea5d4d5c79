"""Helpers shared by the per-mechanism tests of this folder (one test file per
``attnlab/core/mechanisms/<name>.py``, holding that mechanism's naive reference, its core tests
and its module / model tests).

* Score mechanisms (pure functions): input makers, the naive softmax / output formulas every
  score mechanism builds on, a value-and-VJP check against a naive jnp formula.
* Token mixers (pure functions): naive building blocks (GELU, SiLU, LayerNorm) and ``check``
  (values against numpy float64 loops, gradients against central differences).
* Modules: a tiny input, the module's own kernels, KV-cache decoding, a one-layer DecoderLM per
  catalogue entry built from ``configs/mechanisms.py``.
* Token mixers in models: causality / decoding of a tiny two-layer DecoderLM.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import attnlab
from attnlab import masks
from attnlab import models
from numeric_checks import (assert_close, check, erf, first, gelu, ln, silu,  # noqa: F401
                            tree_f64)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

# ---------------------------------------------------------------------------------------------
# Score mechanisms: pure functions.

B, TQ, TK, H, K, D = 2, 5, 7, 4, 2, 6
OFF = TK - TQ  # queries are the last TQ positions of the keys (decode-like, causal)
RTOL, ATOL = 2e-4, 2e-5
CAUSAL = masks.CausalMask(OFF)


def rand(*shape, seed=0, scale=1.0):
  return (np.random.RandomState(seed).standard_normal(shape) * scale).astype(np.float32)


def jit_call(fn, *args, **kwargs):
  """``fn(*args, **kwargs)`` compiled as one program (eager jnp compiles op by op: slow)."""
  return jax.jit(lambda *a: fn(*a, **kwargs))(*args)


def jattn(*args, **kwargs):
  return jit_call(attnlab.attention, *args, **kwargs)


def qkv(seed=0, tq=TQ, tk=TK, h=H, kh=K, d=D):
  return rand(B, tq, h, d, seed=seed), rand(B, tk, kh, d, seed=seed + 1), rand(
      B, tk, kh, d, seed=seed + 2)


def causal_allowed(tq=TQ, tk=TK, off=OFF):
  return (np.arange(tq)[:, None] + off) >= np.arange(tk)[None, :]


# Naive formulas. ``xp`` is numpy (values, float64) or jax.numpy (gradients).


def rep(xp, x, h):
  return xp.repeat(x, h // x.shape[2], axis=2)


def naive_softmax(xp, s, allowed):
  s = xp.where(allowed, s, -1e30)
  p = xp.exp(s - s.max(-1, keepdims=True)) * allowed
  den = p.sum(-1, keepdims=True)
  return p / xp.where(den == 0, 1.0, den)


def naive_out(xp, p, v, h):
  return xp.einsum("bhij,bjhd->bihd", p, rep(xp, v, h))


def check_grads(fn_impl, fn_naive, args, rtol=2e-3, atol=2e-4):
  """jax.grad of the pure function vs jax.grad of the jnp naive formula (same cotangent).

  Returns the pure function's output (value and VJP come from one compiled program)."""
  args = [jnp.asarray(a, jnp.float32) for a in args]
  out = jax.eval_shape(fn_impl, *args)
  ct = jnp.asarray(rand(*out.shape, seed=99))

  def value_and_vjp(fn):
    def run(*a):
      y, vjp = jax.vjp(fn, *a)
      return y, vjp(ct)
    return jax.jit(run)

  y, g1 = value_and_vjp(fn_impl)(*args)
  _, g2 = value_and_vjp(fn_naive)(*args)
  for a, b in zip(g1, g2):
    chex.assert_trees_all_close(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
    chex.assert_tree_all_finite(a)
  return y


def f64(*xs):
  return [np.asarray(x, np.float64) for x in xs]


def softmax_ref(q, k, v, causal_offset=None):
  """``jax.nn.dot_product_attention`` (an independent softmax attention), causal or full."""
  mask = None
  if causal_offset is not None:
    mask = jnp.asarray(causal_allowed(q.shape[1], k.shape[1], causal_offset))[None, None]
  return np.asarray(jit_call(jax.nn.dot_product_attention, jnp.asarray(q), jnp.asarray(k),
                             jnp.asarray(v), mask=mask))


def check_registered(name, kind, fn=None, module=None):
  """The catalogue entry registered by the mechanism's own file: its kind, paper, complexity,
  its "xla" implementation (the pure function) and its NNX module."""
  import attnlab.nn  # pylint: disable=g-import-not-at-top
  assert name in attnlab.list_mechanisms()
  mech = attnlab.get_mechanism(name)
  assert mech.kind == kind and "arXiv" in mech.paper
  # The catalogue's "fused kernel" column: "pallas (...)" exactly when a pallas path exists.
  assert mech.kernel.startswith("pallas") == ("pallas" in mech.implementations), mech.kernel
  assert mech.complexity.startswith("O(")
  if fn is not None:
    assert mech.implementations["xla"].fn is fn
  if module is not None:
    assert attnlab.nn.get_attention_module(name) is module


# ---------------------------------------------------------------------------------------------
# Token mixers: pure functions.


def causal(t, b=1):
  return np.broadcast_to(np.tril(np.ones((t, t), bool)), (b, t, t))


def segments_allowed(seg):
  """Causal & same-segment, ``seg [B, T]``."""
  t = seg.shape[1]
  return causal(t, seg.shape[0]) & (seg[:, :, None] == seg[:, None, :])


# Options of the implementations the score-mechanism tests run: the dense reference and the
# chunked score_mod path with ragged tiles.
IMPLS = {"xla": dict(implementation="xla"),
         "chunked": dict(implementation="chunked", block_q=2, block_k=4)}


def check_deconstructed(mechanism, naive, impl="xla"):
  """A "Deconstructing Attention" mechanism through ``attnlab.attention`` (implementation
  ``impl``, see ``IMPLS``) against its naive loops (values, gradients) under causal segment
  masks; its rows are distributions over the visible keys."""
  b, t, h, kh, d = 2, 5, 4, 2, 3
  q, k, v = rand(b, t, h, d, seed=1), rand(b, t, kh, d, seed=2), rand(b, t, kh, d, seed=3)
  seg = np.array([[0, 0, 0, 1, 1], [0, 1, 1, 1, 1]])
  allowed = segments_allowed(seg)
  mask = masks.SegmentMask(seg)
  scale = 1 / math.sqrt(d)
  _, w = check(lambda q, k, v: attnlab.attention(
      q, k, v, mechanism=mechanism, mask=mask, is_causal=True, return_weights=True,
      **IMPLS[impl]), lambda q, k, v: naive(np, q, k, v, allowed, scale), (q, k, v))
  # Rows are distributions over the visible keys.
  w = np.asarray(w)
  assert (w >= 0).all() and (w[np.broadcast_to(~allowed[:, None], w.shape)] == 0).all()
  assert_close(w.sum(-1), np.ones(w.shape[:-1]), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Modules: naive recomputation from their own parameters, KV-cache decoding.

E, BATCH, T, VOCAB = 16, 2, 6, 11
D_MOD = E // H  # the modules' head_dim
CAUSAL_T = np.tril(np.ones((T, T), bool))
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


def check_decode(mod, x, full):
  """KV-cache decoding in chunks of 2 tokens (one compile) reproduces the full forward."""
  mod.init_cache(BATCH, 8)
  step = nnx.jit(lambda m, xs: m(xs, decode=True))
  got = np.concatenate([np.asarray(step(mod, x[:, i:i + 2])) for i in range(0, T, 2)], axis=1)
  chex.assert_trees_all_close(got, np.asarray(full), rtol=2e-4, atol=2e-5)


def make(cls, **kw):
  """``cls(E, H, ...)`` with typed keyword arguments (GQA with K kv heads, causal)."""
  kw.setdefault("num_kv_heads", K)
  kw.setdefault("causal", True)
  return cls(E, H, rngs=nnx.Rngs(0), **kw)


@functools.lru_cache(maxsize=None)
def mechanism_configs():
  """``configs/mechanisms.py`` (``OVERRIDES``, ``overrides_for``, ``get_config``)."""
  path = os.path.join(ROOT, "configs", "mechanisms.py")
  spec = importlib.util.spec_from_file_location("attnlab_configs_mechanisms_tests", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def model_config(name):
  """A one-layer model config with the catalogue overrides of ``name`` applied."""
  cfg = models.default_model_config()
  cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.mlp_dim, cfg.max_len = 1, E, H, 32, 16
  cfg.num_kv_heads = None if name == "crate" else K
  for key, val in mechanism_configs().overrides_for(name).items():
    assert key.startswith("model."), key
    parts = key.split(".")[1:]
    parent = cfg
    for p in parts[:-1]:
      parent = parent[p]
    parent[parts[-1]] = val
  return cfg


def check_decoder_lm_forward_grad(name, expected_cls):
  """The catalogue overrides build a DecoderLM whose blocks use the mechanism's module; one
  forward + backward is finite with a non-zero gradient. (KV-cache decoding is checked per
  module.)"""
  model = models.build_model(model_config(name), vocab_size=VOCAB, rngs=nnx.Rngs(0))
  assert type(model.stack.blocks[0].attention) is expected_cls
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
  chex.assert_tree_all_finite(leaves)
  assert any(np.any(np.asarray(g) != 0) for g in leaves)


# ---------------------------------------------------------------------------------------------
# Token mixers in a tiny two-layer DecoderLM.

MIX_VOCAB = 13

# flax 0.12 deprecates Module.sow outside nnx.capture; the trainer decides how it collects.
SOW_WARNINGS = pytest.mark.filterwarnings("ignore:.*sow.*:DeprecationWarning")


def tiny_cfg(mechanism="softmax", **kw):
  cfg = models.default_model_config()
  cfg.update(dict(num_layers=2, d_model=16, num_heads=2, mlp_dim=32, max_len=8))
  cfg.attention.mechanism = mechanism
  if mechanism == "decon_nonapprox":
    cfg.position = "none"
  cfg.update(kw)
  return cfg


def mixer_tokens(seed=0, b=2, t=8):
  return jnp.asarray(np.random.RandomState(seed).randint(1, MIX_VOCAB, (b, t)), jnp.int32)


# As the trainer calls models: under nnx.capture (which collects the sown aux_loss).
mixer_forward = nnx.jit(lambda m, x: nnx.capture(m, nnx.Intermediate)(x)[0])
mixer_decode = nnx.jit(lambda m, x: m(x, decode=True))


def check_decoder_is_causal_and_decodes(mechanism):
  """Changing token t changes no logit before t (and does change the logits at t); for the
  mixers with their own decoding path, incremental decoding reproduces the full forward."""
  model = models.build_model(tiny_cfg(mechanism), vocab_size=MIX_VOCAB, rngs=nnx.Rngs(0))
  a = mixer_tokens(1, b=1)
  b = a.at[0, 5].set((a[0, 5] + 3) % MIX_VOCAB)
  toks = jnp.concatenate([a, b])
  logits = mixer_forward(model, toks)
  chex.assert_trees_all_close(logits[0, :5], logits[1, :5], rtol=0, atol=1e-6)
  assert float(jnp.abs(logits[0, 5:] - logits[1, 5:]).max()) > 1e-4
  if mechanism not in ("ninformer", "decon_staticqk"):  # input-cache / shared-tap paths
    return
  model.init_cache(2, 8)
  steps = [mixer_decode(model, toks[:, :4])] + [mixer_decode(model, toks[:, i:i + 2])
                                               for i in (4, 6)]
  chex.assert_trees_all_close(jnp.concatenate(steps, axis=1), logits, rtol=1e-4, atol=1e-5)
