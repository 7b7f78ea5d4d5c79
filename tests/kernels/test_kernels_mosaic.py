"""The TPU ("mosaic") driver in TPU interpret mode (``pltpu.InterpretParams``) on CPU.

TPU interpret mode simulates VMEM/SMEM, scalar prefetch and the grid pipeline, and fills
uninitialised buffers with NaN, so reading an output or scratch block that the kernel never
wrote shows up as a NaN. It is slower than the generic interpreter: cases are small.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from attnlab import masks
from attnlab.kernels import flash_attention

from _kernel_helpers import assert_close, fwd_vjp, jit_fast, make_inputs, reference

pltpu = pytest.importorskip("jax.experimental.pallas.tpu")


def _check(seed, *, normalizer="softmax", mask=None, b=1, tq=40, tk=50, h=2, kh=1, d=64,
           dtype=jnp.float32, bias_shape=None, softcap=None, alibi=False, **kw):
  q, k, v, ct = make_inputs(seed, b, tq, tk, h, kh, d, dtype)
  bias = None if bias_shape is None else jax.random.normal(
      jax.random.PRNGKey(3), bias_shape, jnp.float32)
  extra = dict(mask=mask, softcap=softcap,
               alibi_slopes=attnlab.alibi_slopes(h) if alibi else None)

  def kern(q, k, v, bias):
    return flash_attention(q, k, v, bias=bias, normalizer=normalizer, kernel_backend="mosaic",
                           block_q=16, block_k=16, block_q_bwd=16, block_k_bwd=16, **extra, **kw)

  got_out, got_grads = fwd_vjp(kern, q, k, v, ct, bias, fast_compile=True)
  f32 = lambda x: x.astype(jnp.float32)
  want_out, want_grads = fwd_vjp(lambda q, k, v, bias: reference(normalizer)(
      q, k, v, bias=bias, **extra), f32(q), f32(k), f32(v), f32(ct), bias)
  assert_close(got_out, want_out, dtype, "out")
  for n, (g, w) in enumerate(zip(got_grads, want_grads)):
    assert_close(g, w, dtype, f"d{'qkvb'[n]}")


def test_mosaic_bf16_causal_gqa_full_bias_grad():
  _check(0, dtype=jnp.bfloat16, mask=masks.CausalMask(), h=4, kh=2, bias_shape=(1, 4, 40, 50))


def test_mosaic_sigmoid_segments_softcap_alibi_key_bias():
  seg = jnp.asarray(np.repeat(np.r_[np.zeros(20), np.ones(30)][None], 2, 0).astype(np.int32))
  _check(1, normalizer="sigmoid", b=2, tq=50, mask=masks.SegmentMask(seg), softcap=4.0,
         alibi=True, bias_shape=(1, 1, 1, 50))


def test_mosaic_visits_match_triton():
  """Same tile skipping on both drivers (mosaic grid steps past the count are no-ops)."""
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(kk, (1, 64, 1, 64)) for kk in ks)
  mask = masks.SlidingWindowMask(20)
  run = lambda backend: jit_fast(lambda a, b_, c: flash_attention(
      a, b_, c, mask=mask, block_q=16, block_k=16, block_q_bwd=16, block_k_bwd=16,
      kernel_backend=backend, debug_counts=True), q, k, v)
  out_m, counts_m = run("mosaic")
  out_t, counts_t = run("triton")
  chex.assert_trees_all_equal(np.asarray(counts_m), np.asarray(counts_t))
  chex.assert_trees_all_close(np.asarray(out_m), np.asarray(out_t), rtol=1e-5, atol=1e-5)
  assert int(np.asarray(counts_m).sum()) < 16  # 4x4 tiles, window of 20 keys: some skipped
