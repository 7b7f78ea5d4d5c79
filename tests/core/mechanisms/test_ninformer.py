"""NiNformer token mixing: the pure function vs numpy float64 loops written here (values, and
gradients by central differences), causality and prefix consistency; ``NiNformerMixer`` in a
tiny DecoderLM (causal, input-cache decoding), its typed arguments and config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnlab import models
from attnlab.core.mechanisms import ninformer
from attnlab.nn.mechanisms.ninformer import NiNformerMixer

from _helpers import (MIX_VOCAB, SOW_WARNINGS, assert_close, causal, check,  # noqa: I100
                      check_decoder_is_causal_and_decodes, gelu, jit_call, ln, rand,
                      segments_allowed, tiny_cfg)

pytestmark = SOW_WARNINGS


def ninformer_params(e, tmax, r, c, seed=0):
  shapes = {k: f(e, tmax, r, c) for k, f in ninformer.PARAM_SHAPES.items()}
  return {k: rand(*s, seed=seed + i, scale=0.5) for i, (k, s) in enumerate(shapes.items())}


def naive_ninformer(xp, x, p, allowed, eps=1e-6):
  b_, t, e = x.shape
  r = p["token_w1"].shape[1]
  outs = []
  for b in range(b_):
    xb = x[b]
    z = ln(xp, xb, p["ln_token_scale"], p["ln_token_bias"], eps)
    rows = []
    for i in range(t):  # output position
      acc = p["token_b2"][i]
      for j in range(t):  # hidden position
        if not allowed[b, i, j]:
          continue
        for q in range(r):
          pre = p["token_b1"][j, q]
          for k in range(t):
            if allowed[b, j, k]:
              pre = pre + p["token_w1"][j, q, k] * z[k]
          acc = acc + p["token_w2"][i, j, q] * gelu(xp, pre)
      rows.append(acc * xp.ones(e) if np.ndim(acc) == 0 else acc)
    v = xb + xp.stack(rows)
    hc = gelu(xp, ln(xp, v, p["ln_channel_scale"], p["ln_channel_bias"], eps)
              @ p["channel_w1"] + p["channel_b1"])
    v = v + hc @ p["channel_w2"] + p["channel_b2"]
    outs.append((xb @ p["proj_w"] + p["proj_b"]) * v)
  return xp.stack(outs)


def trim(p, t):
  """The leading ``T x T`` block of the max_len-sized token weights."""
  return {k: (v[:t, :, :t] if k == "token_w1" else v[:t, :t] if k == "token_w2" else
              v[:t] if k in ("token_b1", "token_b2") else v) for k, v in p.items()}


# ---------------------------------------------------------------------------------------------
# Pure function.


@pytest.mark.parametrize("kind", ["causal", "segments", "full"])
def test_ninformer_matches_naive(kind):
  b, t, e, tmax, r, c = 2, 5, 4, 7, 2, 6
  x = rand(b, t, e, seed=1)
  p = ninformer_params(e, tmax, r, c, seed=3)
  if kind == "causal":
    allowed = causal(t, b)
  elif kind == "segments":
    allowed = segments_allowed(np.array([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]]))
  else:
    allowed = np.ones((b, t, t), bool)
  allowed_core = None if kind == "full" else allowed  # None: the unmasked code path
  check(lambda x, p: ninformer.ninformer_mixing(x, p, allowed=allowed_core),
        lambda x, p: naive_ninformer(np, x, trim(p, t), allowed), (x, p))


def test_ninformer_causal_no_future_leakage_and_prefix_consistency():
  """Output i reads inputs <= i only, so changing x_t leaves rows < t unchanged, and a prefix
  run equals the full run restricted to the prefix (the leading T x T block of max_len)."""
  b, t, e = 1, 6, 4
  p = ninformer_params(e, 8, 1, 5, seed=5)
  x = rand(b, t, e, seed=2)
  x2 = x.copy()
  x2[:, 4] += 3.0
  f = jax.jit(lambda x: ninformer.ninformer_mixing(x, p, allowed=causal(t)))
  y, y2 = f(x), f(x2)
  assert_close(y[:, :4], y2[:, :4], rtol=0, atol=0)
  assert np.abs(np.asarray(y[:, 4:] - y2[:, 4:])).max() > 1e-3
  y_prefix = jit_call(ninformer.ninformer_mixing, x[:, :3], p, allowed=causal(3))
  assert_close(y_prefix, y[:, :3], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="max_len"):
    ninformer.ninformer_mixing(rand(1, 9, e), p)


# ---------------------------------------------------------------------------------------------
# Module and model.


def test_ninformer_decoder_is_causal_and_decodes():
  check_decoder_is_causal_and_decodes("ninformer")


def test_ninformer_config_errors():
  cfg = tiny_cfg("ninformer")
  cfg.attention.kwargs = {"token_expansoin": 2}
  with pytest.raises(ValueError, match="token_expansoin"):
    models.build_model(cfg, vocab_size=MIX_VOCAB, rngs=nnx.Rngs(0))
  cfg.attention.kwargs = {"token_expansion": 0}
  # Values are checked by the module's constructor when the model is built
  # (validate_model_config checks names and kwargs, see attnlab/models/config.py).
  with pytest.raises(ValueError, match="token_expansion"):
    models.build_model(cfg, vocab_size=MIX_VOCAB, rngs=nnx.Rngs(0))
  mix = NiNformerMixer(16, 2, max_len=8, num_layers=2, layer_index=0, causal=True, mlp_dim=32,
                       rngs=nnx.Rngs(0))
  x = jnp.ones((1, 4, 16))
  with pytest.raises(ValueError, match="head_mask"):
    mix(x, head_mask=jnp.ones(2))
  with pytest.raises(ValueError, match="no attention weights"):
    mix(x, return_weights=True)
  with pytest.raises(ValueError, match="token_expansion"):
    NiNformerMixer(16, 2, token_expansion=0, rngs=nnx.Rngs(0))
