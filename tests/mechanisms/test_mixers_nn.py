"""Token-mixer modules and pooling heads (attnlab.nn.mechanisms_mixers, attnlab.models.encoder):
causality in a decoder LM (changing a future token leaves earlier logits unchanged), decoding,
naive recomputations from the modules' own parameters, paper-level properties, the sown ADL
auxiliary loss, config errors, and the catalogue overrides."""

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnlab
import attnlab.nn.mechanisms_mixers as M
from attnlab import models
from attnlab.core import masks
from attnlab.core import mechanisms_mixers as mm
from attnlab.core.catalogue import mixers as catalogue

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB = 13
TOKEN_MIXERS = ["ninformer", "mixer_none", "mixer_fixed", "decon_approx", "decon_nonapprox",
                "decon_staticqk", "tap_adl"]

# flax 0.12 deprecates Module.sow outside nnx.capture; the trainer decides how it collects.
pytestmark = pytest.mark.filterwarnings("ignore:.*sow.*:DeprecationWarning")


def tiny_cfg(mechanism="softmax", **kw):
  cfg = models.default_model_config()
  cfg.update(dict(num_layers=2, d_model=16, num_heads=2, mlp_dim=32, max_len=8))
  cfg.attention.mechanism = mechanism
  if mechanism == "decon_nonapprox":
    cfg.position = "none"
  cfg.update(kw)
  return cfg


def tokens(seed=0, b=2, t=8):
  return jnp.asarray(np.random.RandomState(seed).randint(1, VOCAB, (b, t)), jnp.int32)


# As the trainer calls models: under nnx.capture (which collects the sown aux_loss).
forward = nnx.jit(lambda m, x: nnx.capture(m, nnx.Intermediate)(x)[0])
decode = nnx.jit(lambda m, x: m(x, decode=True))


@pytest.mark.parametrize("mechanism", TOKEN_MIXERS)
def test_decoder_is_causal_and_decodes(mechanism):
  """Changing token t changes no logit before t (and does change the logits at t); for the
  mixers with their own decoding path, incremental decoding reproduces the full forward."""
  model = models.build_model(tiny_cfg(mechanism), vocab_size=VOCAB, rngs=nnx.Rngs(0))
  a = tokens(1, b=1)
  b = a.at[0, 5].set((a[0, 5] + 3) % VOCAB)
  toks = jnp.concatenate([a, b])
  logits = forward(model, toks)
  np.testing.assert_allclose(logits[0, :5], logits[1, :5], rtol=0, atol=1e-6)
  assert float(jnp.abs(logits[0, 5:] - logits[1, 5:]).max()) > 1e-4
  if mechanism not in ("ninformer", "decon_staticqk"):  # input-cache / shared-tap paths
    return
  model.init_cache(2, 8)
  steps = [decode(model, toks[:, :4])] + [decode(model, toks[:, i:i + 2]) for i in (4, 6)]
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), logits, rtol=1e-4, atol=1e-5)


def test_fixed_mixer_is_input_independent_and_matches_naive():
  """RndEmbQK: Q, K from a frozen random positional embedding, so the attention matrix is the
  same for every input (the paper's 'fixed attention maps'); naive recomputation from the
  module's parameters."""
  cfg = tiny_cfg("mixer_fixed", position="none", num_kv_heads=1)
  mod = M.FixedQKMixer(cfg, layer_index=0, causal=True, rngs=nnx.Rngs(3))
  x1, x2 = (jnp.asarray(np.random.RandomState(s).standard_normal((2, 6, 16)), jnp.float32)
            for s in (1, 2))
  y1, w1 = mod(x1, return_weights=True)
  _, w2 = mod(x2, return_weights=True)
  np.testing.assert_allclose(w1, w2, rtol=0, atol=1e-7)
  assert isinstance(mod.embedding, M.FrozenRandom)
  eps = np.asarray(mod.embedding[...], np.float64)[:6]
  q = np.einsum("te,ehd->thd", eps, np.asarray(mod.w_q[...], np.float64))
  k = np.einsum("te,ehd->thd", eps, np.asarray(mod.w_k[...], np.float64))
  v = np.einsum("bte,ehd->bthd", np.asarray(x1, np.float64), np.asarray(mod.w_v[...]))
  s = np.einsum("ihd,jhd->hij", q, k[:, [0, 0]]) / math.sqrt(8)
  s = np.where(np.tril(np.ones((6, 6), bool)), s, -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  np.testing.assert_allclose(w1[0], w, rtol=1e-4, atol=1e-6)
  out = np.einsum("hij,bjhd->bihd", w, v[:, :, [0, 0]])
  naive = np.einsum("bihd,hde->bie", out, np.asarray(mod.w_o[...], np.float64))
  np.testing.assert_allclose(y1, naive, rtol=1e-4, atol=1e-5)
  # The frozen embedding is not a parameter (the optimizer never sees it).
  assert "embedding" not in nnx.to_pure_dict(nnx.state(mod, nnx.Param))


def test_static_qk_uses_layer0_input_only():
  """StaticEmbQK: layer 1's attention weights come from layer 0's (normalised) input, not from
  the current hidden state: perturbing layer 0's attention and MLP changes the hidden states
  but not layer 1's weights; naive recomputation from the embeddings."""
  cfg = tiny_cfg("decon_staticqk", position="none", num_layers=3)
  model = models.build_model(cfg, vocab_size=VOCAB, rngs=nnx.Rngs(4))
  toks = tokens(3)
  logits, w = model(toks, record_weights_layers=[1, 2])
  blk0 = model.stack.blocks[0]
  for p in (blk0.attention.v.kernel, blk0.mlp.wi.kernel):
    p[...] = p[...] * 3.0 + 0.1
  logits2, w2 = model(toks, record_weights_layers=[1, 2])
  assert float(jnp.abs(logits - logits2).max()) > 1e-3
  for layer in (1, 2):
    np.testing.assert_allclose(w[layer], w2[layer], rtol=1e-5, atol=1e-7)
  # Naive: e = LN_0(Emb(t)); A_1 = softmax(e W_q1 (e W_k1)^T / sqrt(d)).
  emb = np.asarray(model.embedder.tokens.embedding[...], np.float64)[np.asarray(toks)]
  n = blk0.norm1
  mu = emb.mean(-1, keepdims=True)
  e = (emb - mu) / np.sqrt(((emb - mu) ** 2).mean(-1, keepdims=True) + 1e-6)
  e = e * np.asarray(n.scale[...]) + np.asarray(n.bias[...])
  att1 = model.stack.blocks[1].attention
  q = np.einsum("bte,ehd->bhtd", e, np.asarray(att1.q.kernel[...], np.float64))
  k = np.einsum("bte,ehd->bhtd", e, np.asarray(att1.k.kernel[...], np.float64))
  s = np.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(8)
  s = np.where(np.tril(np.ones((8, 8), bool)), s, -np.inf)
  a = np.exp(s - s.max(-1, keepdims=True))
  np.testing.assert_allclose(w[1], a / a.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)
  # Nothing stays behind in the shared tap after a forward pass.
  assert model.stack.blocks[0].attention.tap.value is None


def test_tap_adl_sows_weighted_mean_adl():
  cfg = tiny_cfg("tap_adl")
  cfg.attention.kwargs = {"adl_weight": 0.5, "adl_threshold": 1.0, "num_scales": 3}
  model = models.build_model(cfg, vocab_size=VOCAB, rngs=nnx.Rngs(5))
  toks = tokens(4)
  (_, weights), inter = nnx.jit(lambda m, x: nnx.capture(m, nnx.Intermediate)(
      x, record_weights_layers=[0, 1]))(model, toks)
  sown = [float(v) for v in jax.tree.leaves(inter)]
  assert len(sown) == 2
  want = 0.5 * float(mm.attention_diversification_loss([weights[0], weights[1]],
                                                       threshold=1.0))
  assert sum(sown) == pytest.approx(want, rel=1e-5)
  # No sowing when adl_weight == 0 (shapes only).
  cfg.attention.kwargs = {"adl_weight": 0.0}
  model0 = nnx.eval_shape(lambda: models.build_model(cfg, vocab_size=VOCAB, rngs=nnx.Rngs(5)))
  graphdef, state = nnx.split(model0)
  _, inter0 = jax.eval_shape(
      lambda st, x: nnx.capture(nnx.merge(graphdef, st), nnx.Intermediate)(x), state, toks)
  assert not jax.tree.leaves(inter0)


def test_mixer_none_matches_attention_parameter_count():
  def count(make):
    state = nnx.state(nnx.eval_shape(make), nnx.Param)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))

  cfg = tiny_cfg("mixer_none", d_model=12, num_heads=2)
  mix = count(lambda: M.MixerNone(cfg, layer_index=0, causal=True, rngs=nnx.Rngs(0)))
  mha = count(lambda: attnlab.nn.MultiHeadAttention.from_config(
      tiny_cfg(d_model=12, num_heads=2), layer_index=0, causal=True, rngs=nnx.Rngs(0)))
  assert mix == mha == 4 * 12 * 12


def test_mixer_config_errors():
  cfg = tiny_cfg("ninformer")
  cfg.attention.kwargs = {"token_expansoin": 2}
  with pytest.raises(ValueError, match="token_expansoin"):
    models.build_model(cfg, vocab_size=VOCAB, rngs=nnx.Rngs(0))
  cfg.attention.kwargs = {"token_expansion": 0}
  with pytest.raises(ValueError, match="token_expansion"):
    models.validate_model_config(cfg)
  mix = M.NiNformerMixer(tiny_cfg("ninformer"), layer_index=0, causal=True, rngs=nnx.Rngs(0))
  x = jnp.ones((1, 4, 16))
  with pytest.raises(ValueError, match="head_mask"):
    mix(x, head_mask=jnp.ones(2))
  with pytest.raises(ValueError, match="no attention weights"):
    mix(x, return_weights=True)
  cfg = tiny_cfg(name="encoder_classifier")
  cfg.pooling_kwargs = {"num_heads": 2}
  with pytest.raises(ValueError, match="pooling_kwargs"):
    models.build_model(cfg, vocab_size=VOCAB, rngs=nnx.Rngs(0))
  cfg.pooling = "lowrank_mha_pool"
  cfg.pooling_kwargs = {"num_head": 2}
  with pytest.raises(ValueError, match="num_head"):
    models.build_model(cfg, vocab_size=VOCAB, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------------------------
# Pooling heads in the encoder classifier.


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
  assert logits.shape == (2, 3) and bool(jnp.all(jnp.isfinite(logits)))
  # Padded token ids do not change the logits.
  np.testing.assert_allclose(run(model, toks.at[0, 4:].set(7), weights), logits, rtol=1e-5,
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
      pooled, _ = mm.lowrank_multihead_pool(final, model.pool.p[...], model.pool.q[...],
                                            context=model.pool.context[...], valid=valid)
    else:
      p = {k: model.pool.params[k][...] for k in model.pool.param_names}
      pooled = mm.multilayer_trainable_pool(jnp.stack(hiddens[:-1] + [final]), p,
                                            num_heads=2, valid=valid)
    return model.head(pooled)

  np.testing.assert_allclose(nnx.jit(manual)(model, toks, weights != 0), logits, rtol=1e-4,
                             atol=1e-5)
  assert model.pool.out_dim == (2 * 16 if pooling == "lowrank_mha_pool" else 16)


# ---------------------------------------------------------------------------------------------
# Catalogue.


def _mechanism_configs():
  path = os.path.join(ROOT, "configs", "mechanisms.py")
  spec = importlib.util.spec_from_file_location("attnlab_configs_mechanisms_mixers", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_catalogue_entries_documented_and_configs_build():
  """Every entry: paper with arXiv id, a description, complete overrides that load through
  configs/mechanisms.py:<name>,local and build a model that runs on a batch of that data."""
  from attnlab import data as data_lib
  assert set(catalogue.ENTRIES) == set(mm.MECHANISMS)
  cfgs = _mechanism_configs()
  for name in catalogue.ENTRIES:
    entry = attnlab.get_mechanism(name)
    assert "arXiv" in entry.paper and entry.description and entry.config, name
    assert entry.kind == mm.MECHANISMS[name]
    config = cfgs.get_config(f"{name},local")
    if entry.kind == "pooling":
      assert config.model.name == "encoder_classifier" and config.model.pooling == name
      assert config.data.name == "mqar_classification"
      assert data_lib.num_classes(config.data) <= config.model.num_classes
    else:
      assert config.model.attention.mechanism == name
    batch = next(iter(data_lib.make_dataset(
        dict(config.data.to_dict(), read_num_threads=0), "train", global_batch_size=2, seed=0)))
    # Shapes only (tracing, no compilation): the lead's smoke test trains every entry.
    model = nnx.eval_shape(lambda: models.build_model(  # noqa: B023
        config.model, vocab_size=data_lib.vocab_size(config.data), rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)

    def apply(state, inputs, weights):
      m = nnx.merge(graphdef, state)  # noqa: B023
      return m(inputs, weights=weights) if entry.kind == "pooling" else m(inputs)  # noqa: B023

    out = jax.eval_shape(apply, state, batch["inputs"], batch["weights"])
    want = ((2, config.model.num_classes) if entry.kind == "pooling"
            else (2, config.data.seq_len, config.data.vocab_size))
    assert out.shape == want, (name, out.shape)
