"""FiRST layer routers (arXiv 2410.12513): router probability, gates (hard, straight-through)
and gated residual vs naive formulas (values, gradients), the prefill decision and skip
regularizer; in a model, never-skip decoding equals the plain model, an always-skipped layer
equals the model without it (token and prefill policies), the soft gate vs naive and its
gradients; the catalogue entry."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnlab.core.variants import routing
from attnlab.models import default_model_config

from _variant_helpers import (B, E, T, check_block_entry, decode_step, forward,  # noqa: I100
                              greedy_decode, model_of, rnd, tokens)


# ---------------------------------------------------------------------------------------------
# Pure functions.


def test_router_probability_and_gates_match_naive_with_grads():
  x, w1, b1, w2 = rnd(0, (2, 3, 6)), rnd(1, (6, 4)), rnd(2, (4,)), rnd(3, (4,))
  b2 = 0.3
  h = np.maximum(x @ w1 + b1, 0.0)
  want = 1 / (1 + np.exp(-(h @ w2 + b2)))
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  p = routing.router_probability(f32(x), f32(w1), f32(b1), f32(w2), f32(b2))
  chex.assert_trees_all_close(p, want, rtol=1e-5, atol=1e-6)
  y = rnd(4, (2, 3, 6))
  chex.assert_trees_all_close(routing.gated_residual(f32(x), f32(y), p),
                              want[..., None] * y + (1 - want[..., None]) * x, rtol=1e-5,
                              atol=1e-5)
  chex.assert_trees_all_equal(routing.hard_gate(p, 0.5), (want >= 0.5).astype(np.float32))
  # Straight-through: hard forward value, the soft gate's gradient.
  st = routing.straight_through_gate(p, 0.5)
  chex.assert_trees_all_close(st, routing.hard_gate(p, 0.5), rtol=1e-7, atol=1e-6)

  def loss(gate_fn, ww):
    pp = routing.router_probability(f32(x), ww, f32(b1), f32(w2), f32(b2))
    return jnp.sum(routing.gated_residual(f32(x), f32(y), gate_fn(pp)) ** 2)

  g_st = jax.grad(lambda ww: loss(lambda q: routing.straight_through_gate(q, 0.5), ww))(f32(w1))
  hard, p0 = f32(want >= 0.5)[..., None], f32(want)[..., None]

  def ref(ww):  # forward value uses the hard gate; d gate / d w = d p / d w
    pp = jax.nn.sigmoid(jax.nn.relu(f32(x) @ ww + f32(b1)) @ f32(w2) + b2)[..., None]
    return jnp.sum((f32(x) + (hard + pp - p0) * (f32(y) - f32(x))) ** 2)

  chex.assert_trees_all_close(g_st, jax.grad(ref)(f32(w1)), rtol=1e-4, atol=1e-5)
  assert float(jnp.abs(g_st).sum()) > 0


def test_gated_residual_extremes_and_prefill_decision():
  x, y = jnp.ones((1, 2, 3)), 2 * jnp.ones((1, 2, 3))
  chex.assert_trees_all_equal(routing.gated_residual(x, y, jnp.ones((1, 2))), y)
  chex.assert_trees_all_equal(routing.gated_residual(x, y, jnp.zeros((1, 2))), x)
  p = jnp.array([[0.9, 0.3, 0.4], [0.2, 0.1, 0.9]])
  chex.assert_trees_all_equal(routing.prefill_decision(p, 0.5), np.asarray([True, False]))
  chex.assert_trees_all_close(routing.skip_regularizer([p, p * 0]), float(p.mean()) / 2,
                              rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Catalogue entry and model config.


def test_first_router_catalogue_entry_and_default_config():
  check_block_entry("first_router")
  assert default_model_config().router.enabled is False



# ---------------------------------------------------------------------------------------------
# Model.


def force(blk, execute: bool):
  blk.router.w2[...] = jnp.zeros_like(blk.router.w2[...])
  blk.router.b2[...] = jnp.float32(30.0 if execute else -30.0)


def copy_into(dst, src):
  nnx.update(dst, nnx.state(src, nnx.Param))


def _no_router(m):
  """A copy of ``m`` whose routers always execute (the prefill runs every layer)."""
  c = nnx.clone(m)
  for blk in c.stack.blocks:
    force(blk, True)
  return c


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
  chex.assert_trees_all_close(logits[:, :-1], full[:, :-1], rtol=1e-7, atol=1e-4)
  chex.assert_trees_all_close(full, forward(plain, seq), rtol=1e-7, atol=1e-5)


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
  # Straight-through forward.
  chex.assert_trees_all_close(forward(m, toks), want, rtol=1e-7, atol=1e-5)
  if policy == "token":  # per-token skipping from the first token on == layer removed
    logits, seq = greedy_decode(m, toks[:, :3], 2)
    chex.assert_trees_all_close(logits[:, :-1], forward(small, seq)[:, :-1], rtol=1e-7,
                                atol=1e-4)
  else:  # FiRST: the prompt runs every layer and fixes the decision for later tokens
    m.init_cache(B, 16)
    prompt_logits = decode_step(m, toks[:, :3])
    chex.assert_trees_all_close(prompt_logits, forward(_no_router(m), toks[:, :3]), rtol=1e-7,
                                atol=1e-4)
    decisions = [np.asarray(b.router.decision[...]) for b in m.stack.blocks]
    assert [d.tolist() for d in decisions] == [[True] * B, [False] * B, [True] * B]


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
  chex.assert_trees_all_close(blk(x), p[..., None] * y + (1 - p[..., None]) * x, rtol=1e-7,
                              atol=1e-5)

  def loss(mm):
    return jnp.mean(mm(tokens(8), deterministic=False) ** 2)

  grads = nnx.grad(loss)(m)
  g = grads["stack"]["blocks"][1]["router"]
  assert all(float(jnp.abs(g[k][...]).sum()) > 0 for k in ("w1", "b1", "w2", "b2"))
  with pytest.raises(ValueError, match="router.decode_policy"):
    model_of(router__enabled=True, router__decode_policy="sometimes")
