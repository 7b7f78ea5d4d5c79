"""MultiHeadAttention vs naive numpy recomputations from its own parameters."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

import attnlab
from attnlab import masks
from attnlab.nn import attention as A
from attnlab.nn.partitioning import logical_axes

E, H, D, T, B = 16, 4, 4, 8, 2


def rope_naive(x, pos, base=10000.0):
  x = np.asarray(x, np.float64)
  d = x.shape[-1]
  out = x.copy()
  for t in range(x.shape[1]):
    for i in range(d // 2):
      a = pos[t] * base ** (-2.0 * i / d)
      c, s = math.cos(a), math.sin(a)
      x1, x2 = x[:, t, :, i], x[:, t, :, i + d // 2]
      out[:, t, :, i], out[:, t, :, i + d // 2] = c * x1 - s * x2, s * x1 + c * x2
  return out


def naive_mha(mod, x, *, causal=False, rope=False, alibi=False, window=None, head_mask=None,
              bias=None, mechanism="softmax", sigmoid_bias=None, per_head=False):
  """Numpy float64 attention from the module's kernels; returns (y, weights, per-head out)."""
  x = np.asarray(x, np.float64)
  wq, wk, wv, wo = (np.asarray(m.kernel[...], np.float64) for m in (mod.q, mod.k, mod.v, mod.o))
  q = np.einsum("bte,ehd->bthd", x, wq)
  k = np.einsum("bte,ehd->bthd", x, wk)
  v = np.einsum("bte,ehd->bthd", x, wv)
  t = x.shape[1]
  if rope:
    q, k = rope_naive(q, np.arange(t)), rope_naive(k, np.arange(t))
  rep = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
  i, j = np.arange(t)[:, None], np.arange(t)[None, :]
  if alibi:
    s = s - np.asarray(attnlab.alibi_slopes(q.shape[2]))[None, :, None, None] * np.abs(i - j)
  if bias is not None:
    s = s + np.asarray(bias)
  allowed = np.ones((t, t), bool)
  if causal:
    allowed &= j <= i
  if window is not None:
    allowed &= (i - j < window) & (j - i < window if not causal else True)
  if mechanism == "softmax":
    s = np.where(allowed, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
  else:
    sb = -math.log(t) if sigmoid_bias is None else sigmoid_bias
    p = np.where(allowed, 1 / (1 + np.exp(-(s + sb))), 0.0)
  o = np.einsum("bhqk,bkhd->bqhd", p, v)
  if head_mask is not None:
    hm = np.asarray(head_mask, np.float64)
    hm = hm[None] if hm.ndim == 1 else hm
    o = o * hm[:, None, :, None]
  y = np.einsum("bqhd,hde->bqe", o, wo)
  contrib = np.einsum("bqhd,hde->bqhe", o, wo)  # each head's share of y
  return y, p, contrib


def make(**kw):
  args = dict(num_heads=H, rngs=nnx.Rngs(0))
  args.update(kw)
  return A.MultiHeadAttention(E, **args)


def x_input(seed=1, t=T):
  return jax.random.normal(jax.random.key(seed), (B, t, E))


class MHAVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(
      dict(causal=True, position="rope"),
      dict(causal=False, position="alibi", num_kv_heads=2),
  )
  def test_matches_naive(self, causal, position, num_kv_heads=None):
    mod = make(causal=causal, position=position, num_kv_heads=num_kv_heads)
    graphdef, state = nnx.split(mod)
    x = x_input()

    @self.variant
    def fwd(state, x):
      return nnx.merge(graphdef, state)(x)

    want, _, _ = naive_mha(mod, x, causal=causal, rope=position == "rope",
                           alibi=position == "alibi")
    chex.assert_trees_all_close(fwd(state, x), want, rtol=1e-7, atol=2e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_head_mask_zeroes_head(self):
    mod = make(causal=True, position="rope")
    graphdef, state = nnx.split(mod)
    x = x_input()
    head_mask = jnp.array([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])  # [B, H]

    @self.variant
    def fwd(state, x, hm):
      return nnx.merge(graphdef, state)(x, head_mask=hm)

    full, _, contrib = naive_mha(mod, x, causal=True, rope=True)
    got = fwd(state, x, head_mask)
    # Removing head 1 (batch 0) and head 3 (batch 1) subtracts exactly their contribution.
    want = full.copy()
    want[0] -= contrib[0, :, 1]
    want[1] -= contrib[1, :, 3]
    chex.assert_trees_all_close(got, want, rtol=1e-7, atol=2e-5)
    want_naive, _, _ = naive_mha(mod, x, causal=True, rope=True, head_mask=head_mask)
    chex.assert_trees_all_close(got, want_naive, rtol=1e-7, atol=2e-5)


def test_gqa_equals_mha_with_repeated_kv_weights():
  gqa = make(num_kv_heads=2, causal=True, position="rope")
  mha = make(causal=True, position="rope", rngs=nnx.Rngs(5))
  mha.q.kernel[...] = gqa.q.kernel[...]
  mha.o.kernel[...] = gqa.o.kernel[...]
  mha.k.kernel[...] = jnp.repeat(gqa.k.kernel[...], 2, axis=1)
  mha.v.kernel[...] = jnp.repeat(gqa.v.kernel[...], 2, axis=1)
  x = x_input()
  chex.assert_trees_all_close(gqa(x), mha(x), rtol=1e-7, atol=1e-5)


def test_recorded_weights_sum_to_one_and_match_jax_nn():
  mod = make(num_kv_heads=2, causal=True)
  x = x_input()
  out, w = mod(x, return_weights=True)
  chex.assert_shape(w, (B, H, T, T))
  chex.assert_trees_all_close(w.sum(-1), 1.0, rtol=1e-7, atol=1e-5)
  chex.assert_trees_all_close(out, mod(x), rtol=1e-7, atol=1e-6)
  # jax.nn.dot_product_attention with one-hot values returns the weights themselves.
  q, k = mod.q(x), mod.k(x)
  # v must have q's head_dim, so read D columns of the weights at a time.
  eye = jnp.pad(jnp.eye(T), ((0, 0), (0, D - T % D)))
  cols = []
  for c in range(0, T, D):
    onehot = jnp.broadcast_to(eye[None, :, None, c:c + D], (B, T, 2, D))
    cols.append(jax.nn.dot_product_attention(q, k, onehot, is_causal=True))
  ref = jnp.concatenate(cols, axis=-1)[..., :T]  # [B, Tq, H, Tk]
  chex.assert_trees_all_close(w, ref.transpose(0, 2, 1, 3), rtol=1e-7, atol=1e-5)


def test_sigmoid_mechanism_and_kwargs():
  mod = make(mechanism="sigmoid", mechanism_kwargs={"sigmoid_bias": -1.5}, causal=True)
  x = x_input()
  want, p, _ = naive_mha(mod, x, causal=True, mechanism="sigmoid", sigmoid_bias=-1.5)
  out, w = mod(x, return_weights=True)
  chex.assert_trees_all_close(out, want, rtol=1e-7, atol=2e-5)
  chex.assert_trees_all_close(w, p, rtol=1e-7, atol=1e-5)


def test_sliding_window_and_bias_match_naive():
  mod = make(causal=True, sliding_window=3)
  x = x_input()
  bias = jax.random.normal(jax.random.key(3), (1, H, T, T))
  want, _, _ = naive_mha(mod, x, causal=True, window=3, bias=bias)
  chex.assert_trees_all_close(mod(x, bias=bias), want, rtol=1e-7, atol=2e-5)
  enc = make(causal=False, sliding_window=2, head_dim=6)  # head_dim != d_model / heads
  want, _, _ = naive_mha(enc, x, window=2)
  chex.assert_trees_all_close(enc(x), want, rtol=1e-7, atol=2e-5)


def test_extra_mask_is_anded():
  mod = make(causal=True)
  x = x_input()
  seg = jnp.array([[0, 0, 0, 1, 1, 1, 1, 1], [0] * T])
  fwd = nnx.jit(lambda m, x, mask=None: m(x, mask=mask))
  y = fwd(mod, x, masks.SegmentMask(seg))
  # Second segment of row 0 computed alone equals its slice.
  chex.assert_trees_all_close(y[0, 3:], fwd(mod, x[:1, 3:])[0], rtol=1e-7, atol=1e-5)
  chex.assert_trees_all_close(y[1], fwd(mod, x)[1], rtol=1e-7, atol=1e-5)


@pytest.mark.parametrize("position, window", [("rope", 3), ("alibi", None)])
def test_kv_cache_decode_matches_full_forward(position, window):
  mod = make(num_kv_heads=2, causal=True, position=position, sliding_window=window)
  x = x_input()
  full = mod(x)
  mod.init_cache(B, 10)
  step = nnx.jit(lambda m, xs: m(xs, decode=True))
  outs = [step(mod, x[:, :3])]  # prefill 3
  for t in range(3, T):
    outs.append(step(mod, x[:, t:t + 1]))
  chex.assert_trees_all_close(jnp.concatenate(outs, axis=1), full, rtol=1e-7, atol=2e-5)
  assert int(mod.cache_index[...]) == T


def test_decode_errors():
  mod = make(causal=True)
  with pytest.raises(ValueError, match="init_cache"):
    mod(x_input(), decode=True)
  mod.init_cache(B, 8)
  with pytest.raises(ValueError, match="extra mask"):
    mod(x_input(), decode=True, mask=masks.CausalMask())
  with pytest.raises(ValueError, match="cache batch size"):
    mod(jnp.ones((3, 1, E)), decode=True)


def test_logical_axes_on_params():
  mod = make(num_kv_heads=2, use_bias=True)
  assert logical_axes(mod.q.kernel) == ("embed", "heads", "head_dim")
  assert logical_axes(mod.k.kernel) == ("embed", "kv_heads", "head_dim")
  assert logical_axes(mod.v.bias) == ("kv_heads", "head_dim")
  assert logical_axes(mod.o.kernel) == ("heads", "head_dim", "embed")
  assert logical_axes(mod.o.bias) == ("embed",)


def test_bf16_compute():
  mod = make(causal=True, position="rope", dtype="bfloat16")
  x = x_input()
  y = mod(x.astype(jnp.bfloat16))
  assert y.dtype == jnp.bfloat16
  assert mod.q.kernel[...].dtype == jnp.float32
  want, _, _ = naive_mha(mod, x, causal=True, rope=True)
  chex.assert_trees_all_close(y.astype(jnp.float32), want, rtol=1e-7, atol=0.1)


@pytest.mark.parametrize("kw, err, match", [
    (dict(num_kv_heads=3), ValueError, "multiple of num_kv_heads"),
    (dict(position="rope", head_dim=5), ValueError, "even head_dim"),
    (dict(position="rotary"), ValueError, "position must be one of"),
    (dict(mechanism="nope"), ValueError, r"registered mechanisms: \[.*'softmax'"),
    (dict(implementation="nope"), ValueError, "unknown implementation 'nope'"),
    (dict(mechanism_kwargs={"foo": 1}), ValueError, r"unknown attention kwargs \['foo'\]"),
    (dict(mechanism_kwargs={"sigmoid_bias": 1.0}), ValueError,
     "accepted: \\['scale', 'score_mod'\\]"),
    (dict(mechanism_kwargs={"softcap": 1.0}), ValueError, "attention.softcap"),
    (dict(implementation="chunked", mechanism_kwargs={"normalizer": "sigmoid"}), ValueError,
     "may not set 'normalizer'"),
    (dict(sliding_window=0), ValueError, "sliding_window"),
    (dict(softcap=-1.0), ValueError, "softcap"),
])
def test_bad_config_errors(kw, err, match):
  with pytest.raises(err, match=match):
    make(**kw)


def test_bad_input_shape():
  with pytest.raises(ValueError, match="d_model=16"):
    make()(jnp.ones((1, 3, 8)))


def test_accepted_kwargs_from_signatures():
  assert A.accepted_mechanism_kwargs("softmax") == {"scale", "score_mod"}
  assert "sigmoid_bias" in A.accepted_mechanism_kwargs("sigmoid")
  assert "block_q" in A.accepted_mechanism_kwargs("softmax", "chunked")
  mod = make(implementation="chunked", mechanism_kwargs={"block_q": 2, "block_k": 2},
             causal=True)
  ref = make(implementation="xla", causal=True)
  x = x_input()
  chex.assert_trees_all_close(mod(x), ref(x), rtol=1e-7, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Registry.


class GatedAttention(A.MultiHeadAttention):
  """Test plug-in: a learned per-head output gate, configured by a typed keyword argument."""

  core_mechanism = "softmax"

  def __init__(self, d_model, num_heads, *, gate_init: float = 1.0, rngs, **kw):
    super().__init__(d_model, num_heads, rngs=rngs, **kw)
    self.gate = nnx.Param(jnp.full((self.num_heads,), gate_init, jnp.float32))

  def attend(self, q, k, v, *, head_mask, **kw):
    gate = self.gate[...] if head_mask is None else self.gate[...] * head_mask
    return super().attend(q, k, v, head_mask=gate, **kw)


@pytest.fixture
def gated_registered():
  A.register_attention_module("gated_test", GatedAttention)
  yield
  A._MODULES.pop("gated_test", None)


def test_registered_module_is_built_from_config(gated_registered):
  from attnlab import models
  cfg = models.complete(dict(
      d_model=E, num_heads=H, position="none",
      attention=dict(mechanism="gated_test", kwargs={"gate_init": 0.5})))
  assert "gated_test" in A.list_attention_mechanisms()
  mod = models.builder.attention_module(cfg, rngs=nnx.Rngs(0), layer_index=0, causal=True)
  assert isinstance(mod, GatedAttention) and mod.mechanism == "gated_test"
  x = x_input()
  want, _, _ = naive_mha(mod, x, causal=True, head_mask=np.full(H, 0.5))
  chex.assert_trees_all_close(mod(x), want, atol=2e-5)
  cfg.attention.kwargs = {"gate_init": 0.5, "bogus": 1}
  with pytest.raises(ValueError, match=r"unknown attention.kwargs \['bogus'\].*gate_init"):
    models.validate_model_config(cfg)
  # The class fixes the mechanism; its hyperparameters are keyword arguments.
  with pytest.raises(TypeError, match="mechanism="):
    GatedAttention(E, H, mechanism="sigmoid", rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="bogus"):
    GatedAttention(E, H, bogus=1, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="overwrite=True"):
    A.register_attention_module("gated_test", A.MultiHeadAttention)
  with pytest.raises(TypeError, match="nnx.Module subclass"):
    A.register_attention_module("x", object)


def test_unknown_mechanism_lists_valid_names():
  with pytest.raises(ValueError, match=r"valid mechanisms: \[.*'sigmoid'.*'softmax'"):
    A.get_attention_module("flashy")


@pytest.fixture
def temp_core_mechanisms():
  from attnlab.core import registry
  registry.register_mechanism("tmp_block_test", kind="block")
  registry.register_mechanism("tmp_module_test", kind="module")
  yield
  for name in ("tmp_block_test", "tmp_module_test"):
    registry._MECHANISMS.pop(name, None)


def test_non_attention_catalogue_entries_fail_clearly(temp_core_mechanisms):
  valid = A.list_attention_mechanisms()
  assert "tmp_block_test" not in valid and "tmp_module_test" not in valid
  with pytest.raises(ValueError, match=r"'tmp_block_test' is a 'block' catalogue entry.*"
                     r"configs/mechanisms.py:tmp_block_test"):
    A.get_attention_module("tmp_block_test")
  with pytest.raises(ValueError, match=r"'tmp_module_test' \(kind 'module'\) has no NNX "
                     r"attention module: add one"):
    A.get_attention_module("tmp_module_test")
  with pytest.raises(ValueError, match="has no implementation in attnlab.core"):
    make(mechanism="tmp_block_test")
