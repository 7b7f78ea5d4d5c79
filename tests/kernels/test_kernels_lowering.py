"""Cross-platform lowering of the compiled (non-interpret) kernels, checked on CPU.

``jit(...).trace(...).lower(lowering_platforms=("cuda",))`` runs the Pallas Triton lowering
(kernel -> Triton IR, including its power-of-two and indexing checks) and
``lowering_platforms=("tpu",)`` under an abstract TPU v5p device runs the Pallas Mosaic lowering
(block-shape rules, SMEM/scalar-prefetch use). Neither compiles to machine code: PTX/Mosaic
compilation and numerics need the device (tests/kernels/test_gpu.py).
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import masks
from attnlab.kernels import flash_attention

B, T, H, KH = 2, 1000, 4, 2

BLOCKS = {
    "triton": dict(block_q=128, block_k=64, block_q_bwd=64, block_k_bwd=64, num_warps=4,
                   num_stages=2, num_warps_bwd=4, num_stages_bwd=2),
    "mosaic": dict(block_q=128, block_k=128, block_q_bwd=128, block_k_bwd=128, num_warps=0,
                   num_stages=0, num_warps_bwd=0, num_stages_bwd=0),
}
PLATFORM = {"triton": "cuda", "mosaic": "tpu"}


def _platform_context(backend):
  if backend != "mosaic":
    return contextlib.nullcontext()
  dev = jax.sharding.AbstractDevice(device_kind="TPU v5p", num_cores=1, platform="tpu")
  return jax.sharding.use_abstract_mesh(
      jax.sharding.AbstractMesh((1,), ("x",), abstract_device=dev))


def _case(name):
  seg = jnp.zeros((B, T), jnp.int32)
  return {
      "everything_bf16": dict(
          d=128, dtype=jnp.bfloat16, bias=jnp.zeros((B, H, T, T), jnp.float32), softcap=20.0,
          alibi_slopes=jnp.ones((H,)), mask=masks.SegmentMask(seg) & masks.SlidingWindowMask(100)),
      "sigmoid_prefix_lengths_keybias_f32": dict(
          d=64, dtype=jnp.float32, normalizer="sigmoid", bias=jnp.zeros((1, 1, 1, T)),
          mask=masks.PrefixLMMask(np.array([3, 4], np.int32))
          & masks.ValidLengthMask(np.array([500, 900], np.int32))),
      "causal_d256_rowbias": dict(d=256, dtype=jnp.bfloat16, mask=masks.CausalMask(),
                                  bias=jnp.zeros((B, H, T, 1))),
  }[name]


@pytest.mark.parametrize("backend", ["triton", "mosaic"])
@pytest.mark.parametrize("name", ["everything_bf16", "sigmoid_prefix_lengths_keybias_f32",
                                  "causal_d256_rowbias"])
def test_forward_and_backward_lower(backend, name):
  kw = _case(name)
  d, dtype, bias = kw.pop("d"), kw.pop("dtype"), kw.pop("bias")
  q = jnp.zeros((B, T, H, d), dtype)
  k = jnp.zeros((B, T, KH, d), dtype)

  def loss(q, k, v, bias):
    out = flash_attention(q, k, v, bias=bias, kernel_backend=backend, interpret=False,
                          **BLOCKS[backend], **kw)
    return out.astype(jnp.float32).sum()

  grad = jax.grad(loss, argnums=(0, 1, 2, 3))
  with _platform_context(backend):
    text = jax.jit(grad).trace(q, k, k, bias).lower(
        lowering_platforms=(PLATFORM[backend],)).as_text()
  assert "attnlab_flash_dq" in text and "attnlab_flash_dkv" in text


@pytest.mark.parametrize("backend", ["triton", "mosaic"])
def test_debug_counts_lower(backend):
  q = jnp.zeros((1, 512, 2, 128), jnp.bfloat16)
  f = lambda q: flash_attention(q, q, q, mask=masks.CausalMask(), kernel_backend=backend,
                                interpret=False, debug_counts=True, **BLOCKS[backend])
  with _platform_context(backend):
    jax.jit(f).trace(q).lower(lowering_platforms=(PLATFORM[backend],))
