"""DecoderLM: causality, KV-cache decoding, traced ablation inputs, recorded weights."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnlab.models import build_model, default_model_config

V, L, H, T, B = 32, 2, 4, 8, 2


def tiny_cfg(**kw):
  cfg = default_model_config()
  cfg.update(dict(num_layers=L, d_model=16, num_heads=H, num_kv_heads=2, mlp_dim=32,
                  max_len=16))
  cfg.update(kw)
  return cfg


def tiny_model(**kw):
  return build_model(tiny_cfg(**kw), vocab_size=V, rngs=nnx.Rngs(0))


@functools.partial(nnx.jit, static_argnames=("record_weights_layers", "deterministic"))
def fwd(m, toks, *, positions=None, segment_ids=None, head_masks=None, attn_biases=None,
        record_weights_layers=(), deterministic=True):
  """One compilation per (model structure, shapes): cheaper than eager op-by-op on CPU."""
  return m(toks, positions=positions, segment_ids=segment_ids, head_masks=head_masks,
           attn_biases=attn_biases, record_weights_layers=record_weights_layers,
           deterministic=deterministic)


@pytest.fixture(scope="module")
def model():
  return tiny_model()


def tokens(seed=0, b=B, t=T):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, V)


def test_logits_shape_dtype(model):
  out = fwd(model, tokens())
  chex.assert_shape(out, (B, T, V))
  assert out.dtype == jnp.float32


def test_future_tokens_do_not_change_past_logits(model):
  a = tokens()
  b = a.at[:, 5].set((a[:, 5] + 1) % V)
  la, lb = fwd(model, a), fwd(model, b)
  chex.assert_trees_all_close(la[:, :5], lb[:, :5], rtol=1e-7, atol=1e-6)
  assert not np.allclose(la[:, 5:], lb[:, 5:])


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_greedy_kv_cache_decoding_matches_full_forward(position):
  m = tiny_model(position=position)
  m.init_cache(B, 16)
  step = nnx.jit(lambda m, tok: m(tok, decode=True))
  logits = [step(m, tokens(1, t=3))]  # prefill
  seq = tokens(1, t=3)
  for _ in range(T - 3):  # greedy, one token per step
    nxt = jnp.argmax(logits[-1][:, -1], axis=-1)[:, None].astype(jnp.int32)
    seq = jnp.concatenate([seq, nxt], axis=1)
    logits.append(step(m, nxt))
  step_logits = jnp.concatenate(logits[:-1], axis=1)  # logits for positions 0 .. T-2
  full = fwd(m, seq)
  chex.assert_trees_all_close(step_logits, full[:, :T - 1], rtol=1e-7, atol=1e-4)
  chex.assert_trees_all_close(logits[-1][:, 0], full[:, T - 1], rtol=1e-7, atol=1e-4)
  assert int(m.cache_index[...]) == T


def test_one_compilation_serves_every_head_mask(model):
  graphdef, state = nnx.split(model)

  @jax.jit
  def apply(state, toks, head_masks):
    return nnx.merge(graphdef, state)(toks, head_masks=head_masks)

  toks = tokens()
  ones = jnp.ones((L, H))
  ablate = ones.at[1, 2].set(0.0)
  a, b = apply(state, toks, ones), apply(state, toks, ablate)
  assert apply._cache_size() == 1
  chex.assert_trees_all_close(a, fwd(model, toks), rtol=1e-7, atol=1e-5)
  assert not np.allclose(a, b)
  # Per-example masks [L, B, H] are another shape: one more compilation, not one per mask.
  apply(state, toks, jnp.ones((L, B, H)))
  apply(state, toks, jnp.zeros((L, B, H)))
  assert apply._cache_size() == 2


def test_head_mask_equals_removing_head_from_output_projection(model):
  """Masking head h of layer l == zeroing its rows of that layer's output projection."""
  toks = tokens()
  hm = jnp.ones((L, H)).at[1, 2].set(0.0)
  masked = fwd(model, toks, head_masks=hm)
  surgery = nnx.clone(model)
  o = surgery.stack.blocks[1].attention.o.kernel
  o[...] = o[...].at[2].set(0.0)
  chex.assert_trees_all_close(masked, fwd(surgery, toks), rtol=1e-7, atol=1e-5)


def test_attn_biases_routed_per_layer(model):
  toks = tokens()
  bias = jax.random.normal(jax.random.key(4), (1, H, T, T))
  as_list = fwd(model, toks, attn_biases=[None, bias])
  as_array = fwd(model, toks, attn_biases=jnp.stack([jnp.zeros_like(bias), bias]))
  chex.assert_trees_all_close(as_list, as_array, rtol=1e-7, atol=1e-5)
  assert not np.allclose(as_list, fwd(model, toks))
  with pytest.raises(ValueError, match="one entry"):
    fwd(model, toks, attn_biases=[bias])
  with pytest.raises(ValueError, match=r"head_masks must have shape \[num_layers, heads\]"):
    fwd(model, toks, head_masks=jnp.ones((H,)))


def test_recorded_weights(model):
  toks = tokens()
  logits, weights = fwd(model, toks, record_weights_layers=(1,))
  assert set(weights) == {1}
  w = weights[1]
  chex.assert_shape(w, (B, H, T, T))
  chex.assert_trees_all_close(w.sum(-1), 1.0, rtol=1e-7, atol=1e-5)
  chex.assert_trees_all_equal(np.triu(np.asarray(w), k=1), 0.0)  # causal
  chex.assert_trees_all_close(logits, fwd(model, toks), rtol=1e-7, atol=1e-6)
  with pytest.raises(ValueError, match="record_weights_layers"):
    fwd(model, toks, record_weights_layers=(5,))


def test_segment_ids_isolate_packed_documents(model):
  doc1, doc2 = tokens(2, b=1, t=3), tokens(3, b=1, t=5)
  packed = jnp.concatenate([doc1, doc2], axis=1)
  seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2]])
  pos = jnp.array([[0, 1, 2, 0, 1, 2, 3, 4]])
  out = fwd(model, packed, segment_ids=seg, positions=pos)
  chex.assert_trees_all_close(out[:, 3:], fwd(model, doc2), rtol=1e-7, atol=1e-5)
  chex.assert_trees_all_close(out[:, :3], fwd(model, doc1), rtol=1e-7, atol=1e-5)


def test_tied_embeddings_and_bf16():
  m = tiny_model(tie_embeddings=True, dtype="bfloat16")
  assert m.head is None
  out = fwd(m, tokens())
  assert out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  params = jax.tree.leaves(nnx.state(m, nnx.Param))
  assert all(p.dtype == jnp.float32 for p in params)
  # Same parameters in float32 compute give close logits.
  m32 = tiny_model(tie_embeddings=True)
  chex.assert_trees_all_close(out, fwd(m32, tokens()), rtol=1e-7, atol=0.05)


def test_dropout_in_training_mode():
  m = tiny_model(dropout=0.3)
  toks = tokens()
  a = fwd(m, toks, deterministic=False)
  assert not np.allclose(a, fwd(m, toks))
  chex.assert_trees_all_equal(fwd(m, toks), fwd(m, toks))


def test_bad_inputs(model):
  with pytest.raises(TypeError, match="integer"):
    model(jnp.ones((B, T)))
  with pytest.raises(ValueError, match=r"\[batch, length\]"):
    model(jnp.ones((T,), jnp.int32))
  with pytest.raises(ValueError, match="init_cache"):
    tiny_model()(tokens(), decode=True)


def test_absolute_position_embeddings():
  from attnlab.nn.positions import sinusoidal_embedding
  m = tiny_model(position="sinusoidal")
  toks, pos = tokens(), jnp.arange(T)[None]
  want = m.embedder.tokens(toks) + sinusoidal_embedding(pos, 16)
  chex.assert_trees_all_close(m.embedder(toks, pos), want, rtol=1e-7, atol=1e-6)
  m = tiny_model(position="learned")
  want = m.embedder.tokens(toks) + m.embedder.learned.embed.embedding[...][:T][None]
  chex.assert_trees_all_close(m.embedder(toks, pos), want, rtol=1e-7, atol=1e-6)
  with pytest.raises(ValueError, match="exceeds max_len 16"):
    m(jnp.zeros((1, 17), jnp.int32))
