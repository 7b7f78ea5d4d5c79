"""What the Pallas flash kernels accept, and the default driver / interpret mode per platform.

``unsupported_reason(**call)`` is the registry's ``supports`` for the "pallas" implementation:
None when the kernel takes the call, else a sentence saying why not (``implementation="auto"``
then falls back to "chunked"; ``implementation="pallas"`` raises it). Checked: keyword
arguments, shapes, dtype (``SUPPORTED_DTYPES``), head dims (multiples of 8 up to
256, zero-padded to ``SUPPORTED_HEAD_DIMS``), the mask
(``attnlab.kernels.flash.masks.check_supported``), the driver (``BACKENDS``) against the
platform, static scale / soft-cap / sigmoid bias, block sizes, forward-mode autodiff (the
kernel is a ``jax.custom_vjp``: JVP-traced inputs are refused, so "auto" picks "xla" under
``jax.jvp`` / ``jax.jacfwd``) and explicit sharding (inputs sharded over an explicit-axis
mesh, ``jax.make_mesh``'s default, run the kernel per device block under ``jax.shard_map``,
see ``flash/sharding.py``; masks holding arrays are refused there and "auto" falls back to
"chunked"). Inside a user's
``jax.shard_map`` the kernel runs on the local blocks, but only with ``check_vma=False``:
varying inputs (``check_vma=True``, the default) are refused.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.core import chunked
from attnlab.core import common
from attnlab.kernels.flash import masks
from attnlab.kernels.flash import sharding

# The kernels' native head widths; any head dim that is a multiple of HEAD_DIM_MULTIPLE up to
# the largest of them is zero-padded to the next native width by the wrapper (api.py).
SUPPORTED_HEAD_DIMS = (64, 128, 256)
HEAD_DIM_MULTIPLE = 8


def padded_head_dim(d: int) -> int:
  """The native kernel width a head dim ``d`` is zero-padded to (``d`` <= 256)."""
  return next(w for w in SUPPORTED_HEAD_DIMS if w >= d)
SUPPORTED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
BACKENDS = ("triton", "mosaic")

# Keyword arguments accepted on top of the attention contract.
KERNEL_KWARGS = ("block_q", "block_k", "block_q_bwd", "block_k_bwd", "num_warps", "num_stages",
                 "num_warps_bwd", "num_stages_bwd", "kernel_backend", "interpret")
_CONTRACT_KWARGS = ("q", "k", "v", "mask", "bias", "scale", "softcap", "alibi_slopes",
                    "q_offset", "head_mask", "return_weights")


def _pow2(n: int) -> bool:
  return n > 0 and n & (n - 1) == 0


def default_backend_for_platform(platform: str | None = None) -> str:
  platform = platform or jax.default_backend()
  return "mosaic" if platform == "tpu" else "triton"


def default_interpret(backend: str, platform: str | None = None):
  """Interpret on CPU (generic interpreter for triton, TPU interpreter for mosaic)."""
  platform = platform or jax.default_backend()
  if platform != "cpu":
    return False
  if backend == "mosaic":
    from jax.experimental.pallas import tpu as pltpu
    return pltpu.InterpretParams()
  return True


def unsupported_reason(*, normalizer: str = "softmax", **call: Any) -> str | None:
  """None when the Pallas kernel supports ``call`` (attention's keyword arguments), else why
  not. Used as the registry's ``supports`` so "auto" falls back to "chunked"."""
  allowed = set(_CONTRACT_KWARGS) | set(KERNEL_KWARGS) | {"score_mod"}
  if normalizer == "sigmoid":
    allowed.add("sigmoid_bias")
  extra = set(call) - allowed
  if extra:
    return f"unexpected arguments {sorted(extra)}"
  q, k, v = call.get("q"), call.get("k"), call.get("v")
  try:
    common.check_qkv(q, k, v)
  except ValueError as e:
    return str(e)
  dts = {jnp.dtype(x.dtype) for x in (q, k, v)}
  if len(dts) != 1:
    return f"q, k and v must share a dtype, got {sorted(str(d) for d in dts)}"
  dt = dts.pop()
  if dt not in SUPPORTED_DTYPES:
    return f"dtype {dt} is not supported (bfloat16, float16, float32)"
  d, dv = q.shape[-1], v.shape[-1]
  for name, n in (("head_dim", d), ("v head_dim", dv)):
    if n % HEAD_DIM_MULTIPLE or not 0 < n <= SUPPORTED_HEAD_DIMS[-1]:
      return (f"{name} {n} is not supported by the Pallas kernel (supported: multiples of "
              f"{HEAD_DIM_MULTIPLE} up to {SUPPORTED_HEAD_DIMS[-1]})")
  reason = masks.check_supported(call.get("mask"))
  if reason:
    return reason
  backend = call.get("kernel_backend")
  if backend is not None and backend not in BACKENDS:
    return f"kernel_backend must be one of {BACKENDS}, got {backend!r}"
  if q.shape[1] == 0 or k.shape[1] == 0:
    return "empty sequence"
  for name in ("scale", "softcap", "sigmoid_bias"):
    if isinstance(call.get(name), jax.core.Tracer):
      return f"{name} must be a Python number (it is compiled into the kernel), got a tracer"
  arrays = {n: call.get(n) for n in ("q", "k", "v", "bias", "alibi_slopes", "q_offset", "mask")}
  reason = chunked.forward_mode_reason(arrays)
  if reason:
    return reason
  if sharding.is_explicitly_sharded(arrays):
    if call.get("score_mod") is not None:
      return "score_mod with explicitly sharded inputs (use jax.shard_map)"
    if "function" in masks.mask_kind(call.get("mask")):  # batch indices would be local
      return "FunctionMask with explicitly sharded inputs (use jax.shard_map)"
    reason = sharding.unsupported_reason(call.get("mask"))
    if reason:
      return reason
  if chunked._varying_axes(arrays):  # pylint: disable=protected-access
    return ("inputs varying over jax.shard_map axes with check_vma=True are not supported by "
            "the Pallas kernel (pallas_call outputs carry no varying axes); pass "
            "check_vma=False to jax.shard_map, or use implementation='chunked' or 'xla'")
  platform = jax.default_backend()
  if platform not in ("cpu", "gpu", "tpu"):
    return f"platform {platform!r} has no Pallas lowering"
  if not call.get("interpret"):
    eff = backend or default_backend_for_platform(platform)
    if eff == "triton" and platform == "tpu":
      return "the triton driver does not run on TPU"
    if eff == "mosaic" and platform == "gpu":
      return "the mosaic driver does not run on GPU"
    if eff == "mosaic" and "function" in masks.mask_kind(call.get("mask")):
      return ("FunctionMask on the native Mosaic TPU driver (its function's gathers are not "
              "known to lower there; use implementation='chunked')")
  for name in ("block_q", "block_k", "block_q_bwd", "block_k_bwd"):
    val = call.get(name)
    if val is not None and (not isinstance(val, (int, np.integer)) or not _pow2(int(val))
                            or val < 16):
      return f"{name} must be a power of two >= 16, got {val!r}"
  return None
