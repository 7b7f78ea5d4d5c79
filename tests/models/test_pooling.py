"""Attention pooling heads of the encoder classifier: the pure functions of
``attnlab.core.pooling`` vs naive formulas written here (numpy float64 loops for values, central
differences for gradients) and their properties; the heads of ``attnlab.models.pooling`` inside
``EncoderClassifier`` (padding invariance, recomputation from the blocks' outputs), their typed
constructors and the ``pooling_kwargs`` errors of the builder."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnlab import models
from attnlab.core import masks
from attnlab.core import pooling as core_pooling
from attnlab.models.pooling import (POOLINGS, LowRankMHAPool, MultiLayerPool, list_poolings,
                                    register_pooling)
from numeric_checks import assert_close, check, gelu, ln, rand  # noqa: I100

VOCAB = 13

# flax 0.12 deprecates Module.sow outside nnx.capture; the trainer decides how it collects.
pytestmark = pytest.mark.filterwarnings("ignore:.*sow.*:DeprecationWarning")


def tiny_cfg(**kw):
  cfg = models.default_model_config()
  cfg.update(dict(num_layers=2, d_model=16, num_heads=2, mlp_dim=32, max_len=8))
  cfg.update(kw)
  return cfg


def tokens(seed=0, b=2, t=8):
  return jnp.asarray(np.random.RandomState(seed).randint(1, VOCAB, (b, t)), jnp.int32)


# ---------------------------------------------------------------------------------------------
# LAMA: low-rank multi-head pooling.


def naive_lama(xp, h, p, q, c, valid, l2=True, eps=1e-6):
  b_, t, d = h.shape
  m = p.shape[1]
  pooled, ws = [], []
  for b in range(b_):
    idx = [i for i in range(t) if valid is None or valid[b, i]]
    cb = (sum(h[b, i] for i in idx) / len(idx)) if c is None else c
    scores = []
    for i in range(t):
      s = xp.stack([xp.tanh(xp.sum((cb @ p[:, k]) * (h[b, i] @ q[:, k]))) for k in range(m)])
      if l2:
        s = s / (xp.sqrt(xp.sum(s * s)) + eps)
      scores.append(s)
    scores = xp.stack(scores)  # [T, m]
    heads, wh = [], []
    for k in range(m):
      e = xp.stack([xp.exp(scores[i, k]) * float(i in idx) for i in range(t)])
      wk = e / xp.sum(e)
      wh.append(wk)
      heads.append(wk @ h[b])
    pooled.append(xp.concatenate(heads))
    ws.append(xp.stack(wh))
  return xp.stack(pooled), xp.stack(ws)


@pytest.mark.parametrize("context", ["learned", "mean"])
def test_lowrank_pool_matches_naive(context):
  b, t, d, m, r = 2, 5, 4, 3, 2
  h = rand(b, t, d, seed=1)
  p, q = rand(d, m, r, seed=2), rand(d, m, r, seed=3)
  c = rand(d, seed=4) if context == "learned" else None
  valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  args = (h, p, q) if c is None else (h, p, q, c)
  check(lambda h, p, q, c=None: core_pooling.lowrank_multihead_pool(h, p, q, context=c,
                                                                    valid=valid),
        lambda h, p, q, c=None: naive_lama(np, h, p, q, c, valid), args)


def test_lowrank_pool_properties():
  b, t, d, m = 2, 6, 4, 3
  h = rand(b, t, d, seed=1)
  p, q, c = rand(d, m, 1, seed=2), rand(d, m, 1, seed=3), rand(d, seed=4)
  valid = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  pooled, w = core_pooling.lowrank_multihead_pool(h, p, q, context=c, valid=valid)
  chex.assert_shape([pooled, w], [(b, m * d), (b, m, t)])
  # Each head's attention is a distribution over the real tokens.
  assert_close(np.asarray(w).sum(-1), np.ones((b, m)), rtol=1e-6)
  assert (np.asarray(w)[0, :, 4:] == 0).all()
  # Padded token states do not matter; the pooled vector ignores token order.
  h2 = h.copy()
  h2[0, 4:] = 100.0
  assert_close(core_pooling.lowrank_multihead_pool(h2, p, q, context=c, valid=valid)[0], pooled)
  perm = np.array([2, 0, 3, 1, 4, 5])
  assert_close(core_pooling.lowrank_multihead_pool(h[:, perm], p, q, context=c,
                                                   valid=valid[:, perm])[0],
               pooled, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Multi-Layers Trainable Pooling.


def mlp_params(n_layers, d, n_lat, h, dh, f, seed=0):
  shapes = {"layer_emb": (n_layers, d), "latents": (n_lat, d), "ln_q_scale": (d,),
            "ln_q_bias": (d,), "ln_kv_scale": (d,), "ln_kv_bias": (d,), "w_q": (d, h, dh),
            "w_k": (d, h, dh), "w_v": (d, h, dh), "w_o": (h, dh, d), "ln_ff_scale": (d,),
            "ln_ff_bias": (d,), "ff_w1": (d, 2 * f), "ff_b1": (2 * f,), "ff_w2": (f, d),
            "ff_b2": (d,)}
  return {k: rand(*s, seed=seed + i, scale=0.5) for i, (k, s) in enumerate(shapes.items())}


def naive_multilayer(xp, hiddens, p, valid, summary, normalize, eps=1e-5):
  n_layers, b_, t, d = hiddens.shape
  h, dh = p["w_q"].shape[1:]
  outs = []
  for b in range(b_):
    idx = [i for i in range(t) if valid is None or valid[b, i]]
    if summary == "mean":
      s = xp.stack([sum(hiddens[l, b, i] for i in idx) / len(idx) for l in range(n_layers)])
    else:
      s = xp.stack([hiddens[l, b, max(idx)] for l in range(n_layers)])
    s = s + p["layer_emb"]
    kv = ln(xp, s, p["ln_kv_scale"], p["ln_kv_bias"], eps)
    lat = p["latents"]
    lq = ln(xp, lat, p["ln_q_scale"], p["ln_q_bias"], eps)
    rows = []
    for n in range(lat.shape[0]):
      o = 0.0
      for hh in range(h):
        qv = lq[n] @ p["w_q"][:, hh]
        logits = xp.stack([qv @ (kv[l] @ p["w_k"][:, hh]) / math.sqrt(dh)
                           for l in range(n_layers)])
        a = xp.exp(logits - xp.max(logits))
        a = a / xp.sum(a)
        ov = sum(a[l] * (kv[l] @ p["w_v"][:, hh]) for l in range(n_layers))
        o = o + ov @ p["w_o"][hh]
      x = o + lat[n]
      f = ln(xp, x, p["ln_ff_scale"], p["ln_ff_bias"], eps) @ p["ff_w1"] + p["ff_b1"]
      half = f.shape[0] // 2
      x = x + (f[:half] * gelu(xp, f[half:])) @ p["ff_w2"] + p["ff_b2"]
      rows.append(x)
    out = sum(rows) / len(rows)
    if normalize:
      out = out / xp.sqrt(xp.sum(out * out))
    outs.append(out)
  return xp.stack(outs)


@pytest.mark.parametrize("summary,normalize", [("mean", True), ("last", False)])
def test_multilayer_pool_matches_naive(summary, normalize):
  n_layers, b, t, d, n_lat, h, dh, f = 3, 2, 5, 4, 2, 2, 3, 5
  hid = rand(n_layers, b, t, d, seed=1)
  p = mlp_params(n_layers, d, n_lat, h, dh, f, seed=2)
  valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  got = check(lambda hid, p: core_pooling.multilayer_trainable_pool(
      hid, p, num_heads=h, valid=valid, summary=summary, normalize=normalize),
      lambda hid, p: naive_multilayer(np, hid, p, valid, summary, normalize), (hid, p))
  if normalize:  # the paper's embedding is L2-normalised
    assert_close(np.linalg.norm(np.asarray(got), axis=-1), np.ones(b), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Heads in the encoder classifier.


@pytest.mark.parametrize("pooling", ["lowrank_mha_pool", "multilayer_pool"])
def test_encoder_pooling_heads(pooling):
  cfg = tiny_cfg(name="encoder_classifier", num_classes=3, pooling=pooling)
  cfg.pooling_kwargs = ({"num_heads": 2, "rank": 2} if pooling == "lowrank_mha_pool"
                        else {"num_latents": 3, "num_heads": 2, "head_dim": 4})
  model = models.build_model(cfg, vocab_size=VOCAB, rngs=nnx.Rngs(6))
  toks = tokens(5, t=6)
  weights = jnp.asarray([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], jnp.float32)
  run = nnx.jit(lambda m, x, w: nnx.capture(m, nnx.Intermediate)(x, weights=w)[0])
  logits = run(model, toks, weights)
  chex.assert_shape(logits, (2, 3))
  chex.assert_tree_all_finite(logits)
  # Padded token ids do not change the logits.
  chex.assert_trees_all_close(run(model, toks.at[0, 4:].set(7), weights), logits, rtol=1e-5,
                              atol=1e-6)

  # The head reads what it should: recompute from the blocks' outputs and the core function.
  def manual(model, toks, valid):
    x = model.embedder(toks, jnp.broadcast_to(jnp.arange(6)[None], (2, 6)))
    mask = masks.SegmentMask(valid.astype(jnp.int32))
    hiddens = []
    for block in model.stack.blocks:
      x = block(x, mask=mask)
      hiddens.append(x)
    final = model.final_norm(x)
    if pooling == "lowrank_mha_pool":
      pooled, _ = core_pooling.lowrank_multihead_pool(final, model.pool.p[...],
                                                      model.pool.q[...],
                                                      context=model.pool.context[...],
                                                      valid=valid)
    else:
      p = {k: model.pool.params[k][...] for k in model.pool.param_names}
      pooled = core_pooling.multilayer_trainable_pool(jnp.stack(hiddens[:-1] + [final]), p,
                                                      num_heads=2, valid=valid)
    return model.head(pooled)

  chex.assert_trees_all_close(nnx.jit(manual)(model, toks, weights != 0), logits, rtol=1e-4,
                              atol=1e-5)
  assert model.pool.out_dim == (2 * 16 if pooling == "lowrank_mha_pool" else 16)


def test_pooling_heads_typed_constructors():
  """Heads take typed keyword arguments (the builder passes ``pooling_kwargs`` plus
  ``num_layers`` / ``model_heads``); bad values raise ValueError, unknown names TypeError."""
  assert {"lowrank_mha_pool", "multilayer_pool"} <= set(POOLINGS)
  assert {"mean", "cls", "lowrank_mha_pool", "multilayer_pool"} <= set(list_poolings())
  lama = LowRankMHAPool(16, num_heads=2, rank=2, context="mean", rngs=nnx.Rngs(0))
  assert lama.context is None and lama.out_dim == 32 and not lama.all_layers
  x = jnp.asarray(rand(2, 5, 16, seed=1))
  chex.assert_shape(jax.eval_shape(lambda x: lama(x), x), (2, 32))
  mlp = MultiLayerPool(16, num_latents=3, num_heads=0, head_dim=0, ff_mult=2, summary="last",
                       normalize=False, num_layers=2, model_heads=4, rngs=nnx.Rngs(0))
  assert mlp.all_layers and mlp.num_heads == 4 and mlp.out_dim == 16
  hid = jnp.asarray(rand(2, 2, 5, 16, seed=2))
  chex.assert_shape(jax.eval_shape(lambda x, h: mlp(x, hiddens=h), x, hid), (2, 16))
  with pytest.raises(ValueError, match="hiddens"):
    mlp(x)
  with pytest.raises(ValueError, match="context"):
    LowRankMHAPool(16, context="max", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="summary"):
    MultiLayerPool(16, summary="first", rngs=nnx.Rngs(0))
  with pytest.raises(TypeError):
    MultiLayerPool(16, rank=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="built in"):
    register_pooling("mean", LowRankMHAPool)


def test_pooling_config_errors():
  cfg = tiny_cfg(name="encoder_classifier")
  cfg.pooling_kwargs = {"num_heads": 2}
  with pytest.raises(ValueError, match="pooling_kwargs"):
    models.build_model(cfg, vocab_size=VOCAB, rngs=nnx.Rngs(0))
  cfg.pooling = "lowrank_mha_pool"
  cfg.pooling_kwargs = {"num_head": 2}
  with pytest.raises(ValueError, match="num_head"):
    models.build_model(cfg, vocab_size=VOCAB, rngs=nnx.Rngs(0))
