"""EchoAtt (arXiv 2409.14595): ``echo_attention`` vs a naive formula (values, gradients) and
its convexity, ``echo_sources`` validation; in a model, a sharing layer equals the anchor's
weights times its own values (naive recomputation from its parameters, gradients), KV-cache
decoding equals the full forward, the saved q/k parameters; the catalogue entry."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnlab.core.variants import echo
from attnlab.models import count_params, default_model_config
from attnlab.nn import variants

from _variant_helpers import (ATOL, E, H, RTOL, check_block_entry, embed, forward,  # noqa: I100
                              greedy_decode, head, model_of, np_ln, rnd, softmax_rows, tokens)


# ---------------------------------------------------------------------------------------------
# Pure functions.


def naive_echo(xp, w, v, head_mask=None):
  """out[b, i, h] = sum_j w[b, h, i, j] v[b, j, h // g]."""
  h, kh = w.shape[1], v.shape[2]
  vv = xp.repeat(v, h // kh, axis=2)
  out = xp.einsum("bhij,bjhd->bihd", w, vv)
  if head_mask is not None:
    out = out * head_mask[None, None, :, None]
  return out


@pytest.mark.parametrize("h, kh", [(4, 2), (4, 1)])
def test_echo_attention_matches_naive_with_grads(h, kh):
  b, t, d = 2, 5, 3
  w = softmax_rows(rnd(0, (b, h, t, t)) + np.triu(np.full((t, t), -1e9), 1))
  v = rnd(1, (b, t, kh, d))
  hm = np.array([1.0, 0.0, 0.5, 2.0][:h])
  got = echo.echo_attention(jnp.asarray(w, jnp.float32), jnp.asarray(v, jnp.float32),
                            head_mask=jnp.asarray(hm, jnp.float32))
  chex.assert_trees_all_close(got, naive_echo(np, w, v, hm), rtol=RTOL, atol=ATOL)
  loss = lambda fn: lambda w_, v_: jnp.sum(jnp.sin(fn(w_, v_)))  # noqa: E731
  args = (jnp.asarray(w, jnp.float32), jnp.asarray(v, jnp.float32))
  g = jax.grad(loss(lambda a, c: echo.echo_attention(a, c)), argnums=(0, 1))(*args)
  g_ref = jax.grad(loss(lambda a, c: naive_echo(jnp, a, c)), argnums=(0, 1))(*args)
  for a, c in zip(g, g_ref):
    chex.assert_trees_all_close(a, c, rtol=1e-4, atol=1e-5)


def test_echo_output_is_convex_combination_of_own_values():
  """Rows of the anchor's weights sum to 1: each output lies within the range of V_own; a
  one-hot row copies one value (the sharing layer 'attends' like the anchor)."""
  b, h, t, d = 1, 2, 4, 3
  w = softmax_rows(rnd(2, (b, h, t, t)))
  v = rnd(3, (b, t, h, d))
  out = np.asarray(echo.echo_attention(jnp.asarray(w, jnp.float32),
                                       jnp.asarray(v, jnp.float32)))
  assert np.all(out <= v.max(1, keepdims=True) + 1e-5)
  assert np.all(out >= v.min(1, keepdims=True) - 1e-5)
  onehot = np.zeros((b, h, t, t))
  onehot[..., 2] = 1.0
  out = echo.echo_attention(jnp.asarray(onehot, jnp.float32), jnp.asarray(v, jnp.float32))
  chex.assert_trees_all_close(out, np.broadcast_to(v[:, 2:3], out.shape), rtol=1e-7, atol=1e-6)


def test_echo_sources_validation():
  assert echo.echo_sources((0,), (1, 2), 4) == {1: 0, 2: 0}
  assert echo.echo_sources((0, 1), (2, 3), 4) == {2: 0, 3: 1}
  assert echo.echo_sources((), (), 4) == {}
  for anchors, sharing, match in [((1,), (1,), "before"), ((2,), (1,), "before"),
                                  ((0, 1), (1, 2), "both an anchor"),
                                  ((0, 0), (1,), "one entry per"), ((0,), (4,), r"\[0, 4\)"),
                                  ((0,), (1, 1), "duplicates"), ((0,), (), "without")]:
    with pytest.raises(ValueError, match=match):
      echo.echo_sources(anchors, sharing, 4)


# ---------------------------------------------------------------------------------------------
# Catalogue entry and model config.


def test_echo_catalogue_entry_and_default_config():
  check_block_entry("echoatt")
  cfg = default_model_config()
  assert cfg.echo.anchors == () and cfg.echo.sharing_layers == ()



# ---------------------------------------------------------------------------------------------
# Model.


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
  chex.assert_trees_all_close(x1 + got, x_att, rtol=1e-7, atol=1e-5)
  want = x_att + sharing.mlp(sharing.norm2(x_att))
  logits, rec = m(toks, record_weights_layers=(1,))
  chex.assert_trees_all_close(logits, head(m, want), rtol=1e-7, atol=1e-5)
  # A sharing layer reports what it used.
  chex.assert_trees_all_close(rec[1], w0, rtol=1e-7, atol=1e-6)

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
    chex.assert_trees_all_close(a, b, rtol=1e-4, atol=1e-5)


def test_echo_decode_matches_full_forward_and_saves_qk_params():
  m = model_of(echo__anchors=(0,), echo__sharing_layers=(1,))
  logits, seq = greedy_decode(m, tokens(2, t=3), 3)
  chex.assert_trees_all_close(logits[:, :-1], forward(m, seq)[:, :-1], rtol=1e-7, atol=1e-4)
  x, pos = embed(m, seq)
  out, _, hiddens = m.stack(x, positions=pos, return_hiddens=True)  # routes anchor weights
  assert len(hiddens) == 2
  chex.assert_trees_all_close(head(m, hiddens[-1]), forward(m, seq), rtol=1e-7, atol=1e-5)
  assert count_params(model_of()) - count_params(m) == 2 * E * H * (E // H)  # q and k
  with pytest.raises(ValueError, match="anchor 1 must come before"):
    model_of(echo__anchors=(1,), echo__sharing_layers=(0,))
  with pytest.raises(ValueError, match="drop_attention_layers"):
    model_of(echo__anchors=(0,), echo__sharing_layers=(1,), drop_attention_layers=(0,))
