"""Native GPU runs of the Pallas kernels (Triton lowering) at realistic sizes, bf16.

Skipped unless ``jax.default_backend() == "gpu"`` (see conftest.py). Compares values and
q/k/v gradients with attnlab's float32 dense reference at seq 1k-4k.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from attnlab import masks
from attnlab.kernels import flash_attention

from _kernel_helpers import fwd_vjp, make_inputs, reference, rel_err

pytestmark = pytest.mark.gpu

# bf16 inputs and bf16 P / dS operands as in the interpret tests; on GPU the sigmoid also uses
# tanh.approx (relative error ~2^-11) and exp2 is the hardware approximation.
GPU_BF16_TOL = 3e-2


def _compare(seed, *, seq, normalizer, mask=None, b=1, h=8, kh=8, d=128, **kw):
  q, k, v, ct = make_inputs(seed, b, seq, seq, h, kh, d, jnp.bfloat16)
  kern = lambda q, k, v, bias: flash_attention(q, k, v, mask=mask, normalizer=normalizer, **kw)
  dense = lambda q, k, v, bias: reference(normalizer)(q, k, v, mask=mask)
  got_out, got_grads = fwd_vjp(kern, q, k, v, ct)
  f32 = lambda x: x.astype(jnp.float32)
  want_out, want_grads = fwd_vjp(dense, f32(q), f32(k), f32(v), f32(ct))
  errs = [rel_err(got_out, want_out)] + [rel_err(g, w) for g, w in zip(got_grads, want_grads)]
  assert max(errs) <= GPU_BF16_TOL, f"relative errors out/dq/dk/dv: {errs}"
  assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in (got_out, *got_grads))


@pytest.mark.parametrize("seq", [1024, 2048, 4096])
@pytest.mark.parametrize("normalizer", ["softmax", "sigmoid"])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_matches_reference(seq, normalizer, causal):
  _compare(seq, seq=seq, normalizer=normalizer, mask=masks.CausalMask() if causal else None)


@pytest.mark.parametrize("d", [64, 256])
def test_gpu_head_dims_gqa(d):
  _compare(d, seq=2048, normalizer="softmax", mask=masks.CausalMask(), h=8, kh=2, d=d)


def test_gpu_ragged_segments_window():
  seg = jnp.asarray(np.repeat(np.arange(3), 700)[None, :2000].repeat(2, 0).astype(np.int32))
  q, k, v, ct = make_inputs(5, 2, 2000, 2000, 4, 1, 128, jnp.bfloat16)
  mask = masks.SegmentMask(seg) & masks.SlidingWindowMask(512)
  got = jax.jit(lambda a, b_, c: flash_attention(a, b_, c, mask=mask, softcap=30.0))(q, k, v)
  f32 = lambda x: x.astype(jnp.float32)
  want = attnlab.softmax_attention(f32(q), f32(k), f32(v), mask=mask, softcap=30.0)
  assert rel_err(got, want) <= GPU_BF16_TOL


def test_auto_picks_pallas_on_gpu():
  q, k, v, _ = make_inputs(0, 1, 4096, 4096, 8, 8, 128, jnp.bfloat16)
  from attnlab.core import api
  call = dict(q=q, k=k, v=v, mask=masks.CausalMask(), bias=None, scale=None, softcap=None,
              alibi_slopes=None, q_offset=0, head_mask=None, return_weights=False)
  assert api.choose_implementation("softmax", "auto", **call) == "pallas"
