"""Values and q/k/v (and bias) gradients of the Pallas kernels vs attnlab's dense reference.

Runs the "triton" driver (the GPU code path) in Pallas interpret mode on CPU. Lengths are
chosen not to be multiples of the (interpret-mode) 32-wide tiles.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from attnlab import masks
from attnlab.kernels import flash_attention

from _kernel_helpers import assert_close, fwd_vjp, make_inputs, reference

B, TQ, TK, H, KH, D = 2, 70, 90, 4, 2, 64


def _segments(b, t, bounds):
  seg = np.zeros((b, t), np.int32)
  for n, cuts in enumerate(bounds):
    for c in cuts:
      seg[n, c:] += 1
  return jnp.asarray(seg)


def _check(name, *, normalizer="softmax", mask=None, b=B, tq=TQ, tk=TK, h=H, kh=KH, d=D,
           dv=None, dtype=jnp.float32, bias_shape=None, softcap=None, alibi=False,
           q_offset=0, sigmoid_bias=None, backend=None, **kernel_kw):
  q, k, v, ct = make_inputs(abs(hash(name)) % 1000, b, tq, tk, h, kh, d, dtype, dv)
  bias = None
  if bias_shape is not None:
    bias = jax.random.normal(jax.random.PRNGKey(7), bias_shape, jnp.float32)
  extra = dict(mask=mask, softcap=softcap, q_offset=q_offset,
               alibi_slopes=attnlab.alibi_slopes(h) if alibi else None)
  if normalizer == "sigmoid":
    extra["sigmoid_bias"] = sigmoid_bias
  ref = reference(normalizer)

  def kern(q, k, v, bias):
    return flash_attention(q, k, v, bias=bias, normalizer=normalizer, kernel_backend=backend,
                           **extra, **kernel_kw)

  def dense(q, k, v, bias):
    return ref(q, k, v, bias=bias, **extra)

  got_out, got_grads = fwd_vjp(kern, q, k, v, ct, bias, fast_compile=True)
  f32 = lambda x: x.astype(jnp.float32)
  want_out, want_grads = fwd_vjp(dense, f32(q), f32(k), f32(v), f32(ct), bias)
  assert got_out.dtype == q.dtype and got_out.shape == want_out.shape
  assert_close(got_out, want_out, dtype, f"{name} out")
  for n, (g, w) in enumerate(zip(got_grads, want_grads)):
    assert g.shape == w.shape
    assert_close(g, w, dtype, f"{name} d{'qkvb'[n]}")
  return got_out, got_grads


CASES = {
    # masks (softmax, float32, GQA 4 -> 2 heads, ragged lengths)
    "decode_chunk_causal": dict(tq=16, q_offset=74, mask=masks.CausalMask(74)),
    "prefix_lm": dict(mask=masks.PrefixLMMask(np.array([10, 50], np.int32))),
    "valid_lengths_empty_rows": dict(mask=masks.ValidLengthMask(
        kv_lengths=np.array([0, 61], np.int32), q_lengths=np.array([70, 20], np.int32))),
    "segments_causal": dict(tq=TK, mask=masks.SegmentMask(
        _segments(B, TK, [[40], [33, 60]])) & masks.CausalMask()),
    # logits extras and bias gradients
    "bias_full_softcap_alibi_causal": dict(mask=masks.CausalMask(), bias_shape=(B, H, TQ, TK),
                                           softcap=5.0, alibi=True, q_offset=20),
    "bias_shared_over_batch_no_mask": dict(bias_shape=(1, H, TQ, TK)),
    "bias_per_key": dict(bias_shape=(B, 1, 1, TK), mask=masks.CausalMask()),
    # sigmoid
    "sigmoid_causal_bias_softcap": dict(normalizer="sigmoid", mask=masks.CausalMask(),
                                        bias_shape=(B, H, TQ, TK), softcap=3.0),
    "sigmoid_bias_per_query_head": dict(normalizer="sigmoid", bias_shape=(B, H, TQ, 1),
                                        sigmoid_bias=-2.0),
    "sigmoid_segments_alibi": dict(normalizer="sigmoid", tq=TK, alibi=True, mask=masks.SegmentMask(
        _segments(B, TK, [[40], [33, 60]]))),
    # bf16 (looser tolerance, see _kernel_helpers.TOL)
    "bf16_causal": dict(dtype=jnp.bfloat16, mask=masks.CausalMask()),
    "bf16_sigmoid_window": dict(dtype=jnp.bfloat16, normalizer="sigmoid",
                                mask=masks.SlidingWindowMask(24, 3, q_offset=10)),
    # head dims, MQA, v_dim != head_dim, separate backward tiles
    "d128_separate_bwd_blocks": dict(d=128, b=1, h=2, tq=50, tk=60, mask=masks.CausalMask(),
                                     block_q=16, block_k=32, block_q_bwd=64, block_k_bwd=16),
    "d256_mqa_dv128": dict(d=256, dv=128, b=1, h=2, kh=1, tq=40, tk=40,
                           mask=masks.CausalMask()),
    # head dims that are not native kernel widths (zero-padded to 64 / 128 by the wrapper)
    "d32_causal": dict(d=32, b=1, tq=40, tk=40, mask=masks.CausalMask()),
    "d96_dv80_sigmoid_bias": dict(d=96, dv=80, b=1, h=2, kh=1, tq=40, tk=40,
                                  normalizer="sigmoid", bias_shape=(1, 2, 40, 40)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_dense_reference(name):
  out, grads = _check(name, **CASES[name])
  if name == "valid_lengths_empty_rows":  # batch 0 sees no key: exact zeros, no NaN
    assert np.all(np.asarray(out[0]) == 0.0)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


@pytest.mark.slow
@pytest.mark.parametrize("normalizer", ["softmax", "sigmoid"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_larger_shapes(normalizer, dtype):
  _check(f"large-{normalizer}-{jnp.dtype(dtype).name}", normalizer=normalizer, dtype=dtype,
         b=2, tq=333, tk=517, h=8, kh=2, d=128, mask=masks.CausalMask(184),
         block_q=64, block_k=64)
