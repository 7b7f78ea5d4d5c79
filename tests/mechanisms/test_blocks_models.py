"""Block-level variants inside models: config selection, naive re-computations from the
modules' own parameters, decode/KV-cache consistency, and the properties the papers state."""

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnlab
from attnlab.core import mechanisms_blocks as mb
from attnlab.models import build_model, count_params, default_model_config
from attnlab.nn import variants
from attnlab.nn.variants import ProgressiveRepBN, ScaledNorm

V, E, H, M, T, B = 16, 16, 2, 32, 6, 2
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cfg_of(**kw):
  cfg = default_model_config()
  cfg.update(dict(num_layers=2, d_model=E, num_heads=H, mlp_dim=M, max_len=16))
  for key, val in kw.items():
    node = cfg
    *parents, leaf = key.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = val
  return cfg


def model_of(seed=0, **kw):
  return build_model(cfg_of(**kw), vocab_size=V, rngs=nnx.Rngs(seed))


def tokens(seed=0, t=T):
  return jax.random.randint(jax.random.key(seed), (B, t), 0, V)


def embed(m, toks):
  pos = jnp.broadcast_to(jnp.arange(toks.shape[1])[None], toks.shape)
  return m.embedder(toks, pos), pos


def head(m, x):
  return m.head(m.final_norm(x)).astype(jnp.float32)


def np_ln(x, mod, eps=1e-6):
  x = np.asarray(x, np.float64)
  mu = x.mean(-1, keepdims=True)
  y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
  return y * np.asarray(mod.scale[...]) + np.asarray(mod.bias[...])


decode_step = nnx.jit(lambda m, tok: m(tok, decode=True))
forward = nnx.jit(lambda m, tok: m(tok))


def greedy_decode(m, prompt, steps):
  """Prefill ``prompt`` then ``steps`` greedy tokens; returns (per-position logits, tokens)."""
  m.init_cache(B, 16)
  logits = [decode_step(m, prompt)]
  seq = prompt
  for _ in range(steps):
    nxt = jnp.argmax(logits[-1][:, -1], -1)[:, None].astype(jnp.int32)
    seq = jnp.concatenate([seq, nxt], 1)
    logits.append(decode_step(m, nxt))
  return jnp.concatenate(logits, 1), seq


def test_default_config_has_block_keys_and_overrides_apply():
  cfg = default_model_config()
  assert cfg.attention.layer_mechanisms == () and cfg.drop_attention_layers == ()
  assert cfg.echo.anchors == () and cfg.echo.sharing_layers == ()
  assert cfg.router.enabled is False and cfg.norm == "layernorm"
  assert set(cfg.prepbn.keys()) == {"warmup_steps", "decay_steps", "momentum", "eta_init"}
  spec = importlib.util.spec_from_file_location("mech_cfg", f"{ROOT}/configs/mechanisms.py")
  mech = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mech)
  for name in attnlab.list_mechanisms("block"):
    c = mech.get_config(f"{name},local")  # every override names an existing key
    for dotted, val in attnlab.get_mechanism(name).config.items():
      node = c
      for part in dotted.split("."):
        node = node[part]
      assert node == val, (name, dotted)


# ---------------------------------------------------------------------------------------------
# 11. Interleave.


def test_interleave_per_layer_mechanisms_and_kwargs():
  kw = dict(attention__mechanism="sigmoid",
            attention__kwargs={"sigmoid_bias": -1.0})
  mixed = model_of(attention__layer_mechanisms=("softmax", "sigmoid"), **kw)
  b0, b1 = mixed.stack.blocks
  assert (b0.attention.mechanism, b1.attention.mechanism) == ("softmax", "sigmoid")
  assert dict(b0.attention.core_kwargs) == {}  # kwargs belong to attention.mechanism only
  assert dict(b1.attention.core_kwargs) == {"sigmoid_bias": -1.0}
  # Same parameters as the all-sigmoid model; the mixed stack is (softmax block 0, sigmoid
  # block 1), i.e. the all-sigmoid model with its first layer switched to softmax.
  sig = model_of(**kw)
  jax.tree.map(np.testing.assert_array_equal, nnx.state(mixed, nnx.Param),
               nnx.state(sig, nnx.Param))
  toks = tokens()
  x, pos = embed(mixed, toks)
  want = head(mixed, sig.stack.blocks[1](b0(x, positions=pos), positions=pos))
  got = mixed(toks)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert not np.allclose(got, sig(toks), atol=1e-3)


def test_interleave_validation():
  with pytest.raises(ValueError, match="one name per layer: num_layers=2, got 1"):
    model_of(attention__layer_mechanisms=("softmax",))
  with pytest.raises(ValueError, match=r"unknown mechanism\(s\) \['mixer_typo'\]; valid"):
    model_of(attention__layer_mechanisms=("softmax", "mixer_typo"))


# ---------------------------------------------------------------------------------------------
# 12. EchoAtt.


def naive_echo_block(blk, x1, w_anchor, vk, ok):
  """Sharing layer from its own parameters: x + (A_anchor (LN(x) W_V)) W_O, then the MLP."""
  h = jnp.asarray(np_ln(x1, blk.norm1), jnp.float32)
  v = jnp.einsum("bte,ekd->btkd", h, vk)
  v = jnp.repeat(v, H // v.shape[2], axis=2)
  att = jnp.einsum("bhij,bjhd->bihd", w_anchor, v)
  return x1 + jnp.einsum("bthd,hde->bte", att, ok)


def test_echo_sharing_layer_equals_anchor_weights_times_own_values():
  m = model_of(num_kv_heads=1, echo__anchors=(0,), echo__sharing_layers=(1,))
  anchor, sharing = m.stack.blocks
  assert isinstance(sharing.attention, variants.EchoAttention)
  assert not hasattr(sharing.attention, "q") and not hasattr(sharing.attention, "k")
  toks = tokens(1)
  x0, pos = embed(m, toks)
  x1, w0 = anchor(x0, positions=pos, return_weights=True)
  vk, ok = sharing.attention.v.kernel[...], sharing.attention.o.kernel[...]
  x_att = naive_echo_block(sharing, x1, w0, vk, ok)
  got = sharing.attention(sharing.norm1(x1), shared_weights=w0)
  np.testing.assert_allclose(x1 + got, x_att, atol=1e-5)
  want = x_att + sharing.mlp(sharing.norm2(x_att))
  logits, rec = m(toks, record_weights_layers=(1,))
  np.testing.assert_allclose(logits, head(m, want), atol=1e-5)
  np.testing.assert_allclose(rec[1], w0, atol=1e-6)  # a sharing layer reports what it used

  # Gradients w.r.t. the sharing layer's own projections and the anchor's query kernel.
  def loss_model(vk_, ok_, qk_):
    mm = nnx.clone(m)
    mm.stack.blocks[1].attention.v.kernel[...] = vk_
    mm.stack.blocks[1].attention.o.kernel[...] = ok_
    mm.stack.blocks[0].attention.q.kernel[...] = qk_
    return jnp.sum(jnp.sin(mm(toks)))

  def loss_naive(vk_, ok_, qk_):
    mm = nnx.clone(m)
    mm.stack.blocks[0].attention.q.kernel[...] = qk_
    a1, w = mm.stack.blocks[0](x0, positions=pos, return_weights=True)
    h = mm.stack.blocks[1].norm1(a1)
    v = jnp.repeat(jnp.einsum("bte,ekd->btkd", h, vk_), H, axis=2)
    xa = a1 + jnp.einsum("bthd,hde->bte", jnp.einsum("bhij,bjhd->bihd", w, v), ok_)
    xa = xa + mm.stack.blocks[1].mlp(mm.stack.blocks[1].norm2(xa))
    return jnp.sum(jnp.sin(head(mm, xa)))

  args = (vk, ok, anchor.attention.q.kernel[...])
  for a, b in zip(jax.grad(loss_model, (0, 1, 2))(*args), jax.grad(loss_naive, (0, 1, 2))(*args)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_echo_decode_matches_full_forward_and_saves_qk_params():
  m = model_of(echo__anchors=(0,), echo__sharing_layers=(1,))
  logits, seq = greedy_decode(m, tokens(2, t=3), 3)
  np.testing.assert_allclose(logits[:, :-1], forward(m, seq)[:, :-1], atol=1e-4)
  x, pos = embed(m, seq)
  out, _, hiddens = m.stack(x, positions=pos, return_hiddens=True)  # routes anchor weights
  assert len(hiddens) == 2
  np.testing.assert_allclose(head(m, hiddens[-1]), forward(m, seq), atol=1e-5)
  assert count_params(model_of()) - count_params(m) == 2 * E * H * (E // H)  # q and k
  with pytest.raises(ValueError, match="anchor 1 must come before"):
    model_of(echo__anchors=(1,), echo__sharing_layers=(0,))
  with pytest.raises(ValueError, match="drop_attention_layers"):
    model_of(echo__anchors=(0,), echo__sharing_layers=(1,), drop_attention_layers=(0,))


# ---------------------------------------------------------------------------------------------
# 16. LayerNorm Scaling.


@pytest.mark.parametrize("norm", ["layernorm_scaled", "rmsnorm_scaled"])
def test_layernorm_scaling_in_blocks(norm):
  m = model_of(num_layers=3, norm=norm)
  x = jax.random.normal(jax.random.key(0), (B, T, E)) * 2
  for i, blk in enumerate(m.stack.blocks):
    for nm in (blk.norm1, blk.norm2):
      assert isinstance(nm, ScaledNorm) and nm.layer_index == i
      xx = np.asarray(x, np.float64)
      if norm == "rmsnorm_scaled":
        ref = xx / np.sqrt((xx ** 2).mean(-1, keepdims=True) + 1e-6) * np.asarray(nm.scale[...])
      else:
        ref = np_ln(xx, nm)
      np.testing.assert_allclose(nm(x), ref / math.sqrt(i + 1), rtol=1e-4, atol=1e-5)
  assert not isinstance(m.final_norm, ScaledNorm)  # the final norm is not depth-scaled
  # Same parameters as the unscaled model (only the forward changes).
  base = model_of(num_layers=3, norm=norm.replace("_scaled", ""))
  assert count_params(base) == count_params(m)


# ---------------------------------------------------------------------------------------------
# 17. Progressive RepBN.


def test_prepbn_module_schedule_running_stats_and_folding():
  nm = ProgressiveRepBN(E, warmup_steps=1, decay_steps=2, momentum=0.5, rngs=nnx.Rngs(0))
  nm.bn_scale[...] = 1.0 + 0.1 * jnp.arange(E, dtype=jnp.float32)
  nm.bn_bias[...] = 0.05 * jnp.arange(E, dtype=jnp.float32)
  nm.eta[...] = jnp.float32(0.6)
  mean, var = np.zeros(E), np.ones(E)
  for s in range(4):
    x = jax.random.normal(jax.random.key(s), (B, T, E)) * (1 + s) + s
    lam = [1.0, 1.0, 0.5, 0.0][s]
    xx = np.asarray(x, np.float64)
    bm, bv = xx.reshape(-1, E).mean(0), xx.reshape(-1, E).var(0)
    bn = (np.asarray(nm.bn_scale[...]) * (xx - bm) / np.sqrt(bv + 1e-5)
          + np.asarray(nm.bn_bias[...]) + 0.6 * xx)
    ln = (xx - xx.mean(-1, keepdims=True)) / np.sqrt(xx.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(nm(x, deterministic=False), lam * ln + (1 - lam) * bn,
                               rtol=1e-4, atol=1e-4)
    mean, var = 0.5 * mean + 0.5 * bm, 0.5 * var + 0.5 * bv
    np.testing.assert_allclose(nm.mean[...], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nm.var[...], var, rtol=1e-5, atol=1e-5)
    assert int(nm.step[...]) == s + 1
    # Eval: running statistics; folding RepBN into a x + c changes nothing.
    ev = nm(x)
    np.testing.assert_allclose(nm.inference(x), ev, rtol=1e-5, atol=1e-5)
    assert int(nm.step[...]) == s + 1  # evaluation does not advance the schedule
  assert float(nm.lam()) == 0.0
  x = jax.random.normal(jax.random.key(9), (B, T, E))
  a, c = nm.folded()
  np.testing.assert_allclose(nm(x), x * a + c, rtol=1e-5, atol=1e-5)  # pure affine at lambda 0


def test_prepbn_model_one_compilation_and_state_update():
  m = model_of(norm="layernorm_prepbn", prepbn__decay_steps=2)
  assert isinstance(m.stack.blocks[1].norm2, ProgressiveRepBN)
  assert isinstance(m.final_norm, nnx.LayerNorm)
  graphdef, params, rest = nnx.split(m, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

  @jax.jit
  def train_like(params, rest, toks):  # the trainer's pattern: pure state in and out
    def loss(p, r):
      mm = nnx.merge(graphdef, p, r)
      out = jnp.mean(mm(toks, deterministic=False) ** 2)
      return out, nnx.to_pure_dict(nnx.split(mm, nnx.Param, ...)[2])
    (val, new_rest), grads = jax.value_and_grad(loss, has_aux=True)(params, rest)
    return val, grads, new_rest

  toks = tokens(3)
  lams = []
  for _ in range(3):
    _, grads, rest = train_like(params, rest, toks)
    lams.append(float(nnx.merge(graphdef, params, rest).stack.blocks[0].norm1.lam()))
  m = nnx.merge(graphdef, params, rest)
  assert train_like._cache_size() == 1
  assert lams == [0.5, 0.0, 0.0]
  assert int(m.stack.blocks[1].norm2.step[...]) == 3
  eta_grad = grads["stack"]["blocks"][0]["norm1"]["eta"]
  assert np.isfinite(eta_grad) and eta_grad != 0.0


# ---------------------------------------------------------------------------------------------
# 18. Attention drop.


def test_dropped_attention_sublayer_and_importance():
  m = model_of(num_layers=3, drop_attention_layers=(1,))
  blk = m.stack.blocks[1]
  assert blk.attention is None and blk.norm1 is None
  assert "attention" not in nnx.state(m, nnx.Param)["stack"]["blocks"][1]
  x = jax.random.normal(jax.random.key(0), (B, T, E))
  np.testing.assert_allclose(blk(x), x + blk.mlp(blk.norm2(x)), atol=1e-6)
  with pytest.raises(ValueError, match="dropped"):
    m(tokens(), record_weights_layers=(1,))

  toks = tokens(4)
  scores = variants.attention_layer_importance(m, toks)
  assert scores.shape == (3,) and np.isnan(scores[1])
  # Naive: 1 - mean cos(X, X + Attn(LN(X))) from a manual walk through the stack.
  x, pos = embed(m, toks)
  want = []
  for b in m.stack.blocks:
    if b.attention is not None:
      y = x + b.attention(b.norm1(x), positions=pos)
      xx, yy = np.asarray(x, np.float64), np.asarray(y, np.float64)
      cos = (xx * yy).sum(-1) / np.linalg.norm(xx, axis=-1) / np.linalg.norm(yy, axis=-1)
      want.append(1 - cos.mean())
    x = b(x, positions=pos)
  np.testing.assert_allclose(scores[np.array([0, 2])], want, rtol=1e-4)
  # Paper's premise: a sublayer whose output equals its input is redundant (score 0).
  o = m.stack.blocks[2].attention.o.kernel
  o[...] = jnp.zeros_like(o[...])
  scores = variants.attention_layer_importance(m, toks)
  np.testing.assert_allclose(scores[2], 0.0, atol=1e-6)
  assert variants.layers_to_drop(scores, 1) == (2,)
  assert not m.stack.blocks[0].capture_attention_io
  assert not hasattr(m.stack.blocks[0], "attention_io")


# ---------------------------------------------------------------------------------------------
# 19. FiRST routers.


def force(blk, execute: bool):
  blk.router.w2[...] = jnp.zeros_like(blk.router.w2[...])
  blk.router.b2[...] = jnp.float32(30.0 if execute else -30.0)


def copy_into(dst, src):
  nnx.update(dst, nnx.state(src, nnx.Param))


def test_router_never_skip_decode_equals_full_forward():
  m = model_of(router__enabled=True)
  for blk in m.stack.blocks:
    force(blk, True)
  plain = model_of()
  for name in ("embedder", "final_norm", "head"):
    copy_into(getattr(plain, name), getattr(m, name))
  for a, b in zip(plain.stack.blocks, m.stack.blocks):
    copy_into(a.attention, b.attention)
    copy_into(a.mlp, b.mlp)
    copy_into(a.norm1, b.norm1)
    copy_into(a.norm2, b.norm2)
  logits, seq = greedy_decode(m, tokens(5, t=3), 3)
  full = forward(m, seq)
  np.testing.assert_allclose(logits[:, :-1], full[:, :-1], atol=1e-4)
  np.testing.assert_allclose(full, forward(plain, seq), atol=1e-5)


@pytest.mark.parametrize("policy", ["token", "prefill"])
def test_router_always_skip_layer_equals_model_without_it(policy):
  m = model_of(num_layers=3, router__enabled=True, router__train_gate="straight_through",
               router__decode_policy=policy)
  for i, blk in enumerate(m.stack.blocks):
    force(blk, i != 1)
  small = model_of(num_layers=2, router__enabled=True)
  for name in ("embedder", "final_norm", "head"):
    copy_into(getattr(small, name), getattr(m, name))
  copy_into(small.stack.blocks[0], m.stack.blocks[0])
  copy_into(small.stack.blocks[1], m.stack.blocks[2])
  toks = tokens(6, t=5)
  want = forward(small, toks)
  np.testing.assert_allclose(forward(m, toks), want, atol=1e-5)  # straight-through forward
  if policy == "token":  # per-token skipping from the first token on == layer removed
    logits, seq = greedy_decode(m, toks[:, :3], 2)
    np.testing.assert_allclose(logits[:, :-1], forward(small, seq)[:, :-1], atol=1e-4)
  else:  # FiRST: the prompt runs every layer and fixes the decision for later tokens
    m.init_cache(B, 16)
    prompt_logits = decode_step(m, toks[:, :3])
    np.testing.assert_allclose(prompt_logits, forward(_no_router(m), toks[:, :3]), atol=1e-4)
    decisions = [np.asarray(b.router.decision[...]) for b in m.stack.blocks]
    assert [d.tolist() for d in decisions] == [[True] * B, [False] * B, [True] * B]


def _no_router(m):
  """A copy of ``m`` whose routers always execute (the prefill runs every layer)."""
  c = nnx.clone(m)
  for blk in c.stack.blocks:
    force(blk, True)
  return c


def test_router_soft_gate_matches_naive_and_trains():
  m = model_of(router__enabled=True, router__layers=(1,), router__init_bias=0.0)
  assert m.stack.blocks[0].router is None and m.stack.blocks[1].router is not None
  blk = m.stack.blocks[1]
  x = jax.random.normal(jax.random.key(7), (B, T, E))
  r = blk.router
  p = jax.nn.sigmoid(jax.nn.relu(x @ r.w1[...] + r.b1[...]) @ r.w2[...] + r.b2[...])
  blk.router = None
  y = blk(x)
  blk.router = r
  np.testing.assert_allclose(blk(x), p[..., None] * y + (1 - p[..., None]) * x, atol=1e-5)

  def loss(mm):
    return jnp.mean(mm(tokens(8), deterministic=False) ** 2)

  grads = nnx.grad(loss)(m)
  g = grads["stack"]["blocks"][1]["router"]
  assert all(float(jnp.abs(g[k][...]).sum()) > 0 for k in ("w1", "b1", "w2", "b2"))
  with pytest.raises(ValueError, match="router.decode_policy"):
    model_of(router__enabled=True, router__decode_policy="sometimes")


# ---------------------------------------------------------------------------------------------
# 20. Wide versus deep.


def test_wide_deep_sweep_keeps_total_heads_and_attention_size():
  base = cfg_of(num_layers=2, num_heads=2, d_model=E)
  sweep = variants.wide_deep_configs(base, 4, (1, 2, 4), head_dim=8)
  assert [c.num_layers * c.num_heads for c in sweep] == [4, 4, 4]
  attn_params, total = [], []
  for c in sweep:
    m = build_model(c, vocab_size=V, rngs=nnx.Rngs(0))
    params = nnx.state(m, nnx.Param)
    attn_params.append(sum(x.size for b in params["stack"]["blocks"].values()
                           for x in jax.tree.leaves(b["attention"])))
    total.append(count_params(m))
  assert attn_params == [4 * E * 4 * 8] * 3  # q, k, v, o over all heads: the same at any depth
  assert total[0] < total[1] < total[2]  # wider = fewer MLPs = smaller (the paper's point)
  spec = importlib.util.spec_from_file_location("wd_cfg", f"{ROOT}/configs/wide_vs_deep.py")
  wd = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(wd)
  for arg, layers in (("depth=2", 2), ("depth=4,heads=8,local", 4), ("", 1)):
    c = wd.get_config(arg)
    assert c.model.num_layers == layers
    assert c.model.num_layers * c.model.num_heads == (8 if "heads=8" in arg else 4)
  with pytest.raises(ValueError, match="does not divide"):
    wd.get_config("depth=3")
