"""run_with_cache, edits, lenses and patching against independent references.

References: the model's own forward (``model(tokens, head_masks=, attn_biases=)``, a separate
code path), attention recomputed in numpy from the cached q/k/v, and identities (residual
sums, DLA components summing to the logit, patching everything = the corrupt run).
"""

import numpy as np
import pytest
from flax import nnx
import jax.numpy as jnp

from attnlab import analysis
from attnlab.analysis import forward, lens, patching, plots
from attnlab.models import build_model, default_model_config

V, T = 24, 10


def make(implementation="xla", position="rope", kv=2, bias=False, window=None, norm="rmsnorm",
         tie=False):
  cfg = default_model_config()
  cfg.update(dict(num_layers=2, d_model=32, num_heads=4, num_kv_heads=kv, mlp_dim=64,
                  position=position, attention_bias=bias, max_len=32, norm=norm,
                  tie_embeddings=tie))
  cfg.attention.implementation = implementation
  cfg.attention.sliding_window = window
  return build_model(cfg, vocab_size=V, rngs=nnx.Rngs(1))


TOKENS = np.random.default_rng(0).integers(0, V, (2, T))
_M = {}


def model(**kw):
  key = tuple(sorted(kw.items()))
  if key not in _M:
    _M[key] = make(**kw)
  return _M[key]


@nnx.jit
def fwd(m, tokens, head_masks=None, attn_biases=None):
  return m(tokens, head_masks=head_masks, attn_biases=attn_biases)


def naive_attention(q, k, v, window=None):
  """numpy causal softmax attention with GQA: q [B,T,H,D], k/v [B,T,K,D]."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, t, h, d = q.shape
  g = h // k.shape[2]
  k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
  s = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(d)
  i, j = np.arange(t)[:, None], np.arange(t)[None]
  allowed = j <= i
  if window is not None:
    allowed &= i - j < window
  s = np.where(allowed, s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return p, np.einsum("bhts,bshd->bthd", p, v)


@pytest.mark.parametrize("kw", [dict(), dict(position="learned", bias=True, window=4,
                                             norm="layernorm", kv=None, tie=True),
                                dict(position="alibi", kv=1)])
def test_cache_matches_model_and_numpy(kw):
  m = model(**kw)
  logits, cache = analysis.run_with_cache(
      m, TOKENS, names=["q", "k", "v", "pattern", "z", "head_out", "attn_out", "resid_pre",
                        "resid_mid", "mlp_out", "resid_post"])
  np.testing.assert_allclose(logits, fwd(m, TOKENS), atol=2e-5)
  for i in range(2):
    if kw.get("position") != "alibi":
      p, z = naive_attention(cache[f"q.{i}"], cache[f"k.{i}"], cache[f"v.{i}"], kw.get("window"))
      np.testing.assert_allclose(cache[f"pattern.{i}"], p, atol=1e-5)
      np.testing.assert_allclose(cache[f"z.{i}"], z, atol=1e-5)
    np.testing.assert_allclose(cache[f"pattern.{i}"].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(cache[f"resid_mid.{i}"],
                               cache[f"resid_pre.{i}"] + cache[f"attn_out.{i}"], atol=1e-5)
    np.testing.assert_allclose(cache[f"resid_post.{i}"],
                               cache[f"resid_mid.{i}"] + cache[f"mlp_out.{i}"], atol=1e-5)
    o = m.stack.blocks[i].attention.o
    summed = cache[f"head_out.{i}"].sum(2) + (0 if o.bias is None else o.bias[...])
    np.testing.assert_allclose(summed, cache[f"attn_out.{i}"], atol=1e-5)


@pytest.mark.parametrize("implementation", ["chunked", "pallas"])
def test_fused_implementations_agree_with_xla(implementation):
  ref_logits, ref = analysis.run_with_cache(model(), TOKENS, names=["pattern.1", "z.1"])
  edits = [analysis.scale_heads(1, [1.0, 0.0, 0.5, 1.0]),
           analysis.head_logit_bias(0, [2.0, 0.0, -1.0, 0.0], [0], T)]
  m = model(implementation=implementation)
  logits, cache = analysis.run_with_cache(m, TOKENS, names=["pattern.1", "z.1"])
  np.testing.assert_allclose(logits, ref_logits, atol=2e-5)
  np.testing.assert_allclose(cache["pattern.1"], ref["pattern.1"], atol=1e-5)
  np.testing.assert_allclose(analysis.run(m, TOKENS, edits=edits),
                             analysis.run(model(), TOKENS, edits=edits), atol=2e-5)


def test_edits_match_model_inputs_and_compile_once():
  m = model()
  forward._run_jit.clear_cache()
  for h in range(4):
    scale = np.ones(4, np.float32)
    scale[h] = 0.0
    masks = np.ones((2, 4), np.float32)
    masks[1, h] = 0.0
    got = analysis.run(m, TOKENS, edits=[analysis.scale_heads(1, scale)])
    np.testing.assert_allclose(got, fwd(m, TOKENS, head_masks=jnp.asarray(masks)), atol=2e-5)
  assert forward._run_jit._cache_size() == 1  # one program for the whole sweep
  bias = np.zeros((2, 1, 4, 1, T), np.float32)
  bias[0, 0, :, 0, 0] = [3.0, -1.0, 0.0, 2.0]
  got = analysis.run(m, TOKENS, edits=[analysis.head_logit_bias(0, [3.0, -1.0, 0.0, 2.0],
                                                                [0], T)])
  np.testing.assert_allclose(got, fwd(m, TOKENS, attn_biases=jnp.asarray(bias)), atol=2e-5)


def test_patch_mean_ablation_and_value_mix():
  m = model()
  corrupt = (TOKENS + 5) % V
  c_logits, c_cache = analysis.run_with_cache(m, corrupt, names=["embed"])
  got = analysis.run(m, TOKENS, edits=[analysis.patch("embed", c_cache["embed"])])
  np.testing.assert_allclose(got, c_logits, atol=1e-5)  # patching everything = corrupt run
  mean = np.arange(4 * 8, dtype=np.float32).reshape(4, 8)
  _, cache = analysis.run_with_cache(
      m, TOKENS, names=["z.0", "v.0"],
      edits=[analysis.mean_ablate_heads(0, [0, 1, 0, 0], mean)])
  np.testing.assert_allclose(cache["z.0"][:, :, 1], np.broadcast_to(mean[1], (2, T, 8)))
  _, cache = analysis.run_with_cache(m, TOKENS, names=["z.0", "v.0"],
                                     edits=[analysis.value_mix(0, [1.0, 0.0, 0.0, 1.0])])
  v = np.repeat(np.asarray(cache["v.0"]), 2, axis=2)  # GQA: 4 query heads on 2 kv heads
  np.testing.assert_allclose(cache["z.0"][:, :, [0, 3]], v[:, :, [0, 3]], atol=1e-6)


def test_dla_sums_to_logit_and_lens_ends_at_output():
  for m in (model(), model(position="learned", bias=True, window=4, norm="layernorm", kv=None,
                           tie=True)):
    out = lens.direct_logit_attribution(m, TOKENS, jnp.array([3, 4]),
                                        baseline_tokens=jnp.array([5, 6]))
    np.testing.assert_allclose(out["total"], out["logit"], atol=1e-4)
    assert out["heads"].shape == (2, 4, 2)
    lp = lens.logit_lens(m, TOKENS)
    np.testing.assert_allclose(lp[-1], np.asarray(jax_log_softmax(fwd(m, TOKENS))), atol=1e-5)


def jax_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_path_patching_identity():
  """A last-layer sender's only path is the direct one: path patching into the logits equals
  activation patching of that head; a sender with no receivers on its path changes nothing."""
  m = model()
  corrupt = (TOKENS + 7) % V
  metric = patching.logit_diff(-1, TOKENS[:, 0], corrupt[:, 0])
  act = patching.head_patching(m, TOKENS, corrupt, metric)
  for h in (0, 3):
    pp = patching.path_patch(m, TOKENS, corrupt, metric, sender=(1, h), receivers="logits")
    assert abs(pp - act[1, h]) < 1e-4
  clean = float(metric(fwd(m, TOKENS)))
  pp = patching.path_patch(m, TOKENS, corrupt, metric, sender=(0, 1), receivers=[("q", 1, 0)])
  assert abs(pp - clean) > 1e-6  # the sender reaches head 1.0's query
  with pytest.raises(ValueError, match="after the sender"):
    patching.path_patch(m, TOKENS, corrupt, metric, sender=(1, 0), receivers=[("q", 1, 0)])


def test_errors_and_heatmap(tmp_path):
  m = model()
  with pytest.raises(ValueError, match="unknown hook"):
    analysis.run_with_cache(m, TOKENS, names=["qq"])
  with pytest.raises(ValueError, match="layer must be in"):
    analysis.run_with_cache(m, TOKENS, names=["z.5"])
  with pytest.raises(ValueError, match="scores"):
    analysis.run(m, TOKENS, edits=[analysis.Edit("pattern.0", scale=0.0)])
  with pytest.raises(ValueError, match="additive logit bias only"):
    analysis.run(m, TOKENS, edits=[analysis.Edit("scores.0", scale=0.0)])
  with pytest.raises(ValueError, match="needs value"):
    analysis.run(m, TOKENS, edits=[analysis.Edit("z.0", mix=0.5)])
  _, cache = analysis.run_with_cache(m, TOKENS, names=["pattern.0"])
  path = plots.pattern_heatmap(cache["pattern.0"][0], str(tmp_path / "p.png"),
                               labels=[str(t) for t in TOKENS[0]], title="layer 0")
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_residual_patching_identity():
  """Clean and corrupt inputs differ at one position p: patching resid_pre of layer 0 at p
  reproduces the corrupt run; at any other position it changes nothing."""
  m = model()
  p = 4
  corrupt = TOKENS.copy()
  corrupt[:, p] = (corrupt[:, p] + 1) % V
  metric = patching.logit_diff(-1, np.array([3, 3]), np.array([5, 5]))
  grid = patching.residual_patching(m, TOKENS, corrupt, metric)
  clean, bad = float(metric(fwd(m, TOKENS))), float(metric(fwd(m, corrupt)))
  assert abs(grid[0, p] - bad) < 1e-4
  np.testing.assert_allclose(np.delete(grid[0], p), clean, atol=1e-4)
  assert abs(clean - bad) > 1e-3
