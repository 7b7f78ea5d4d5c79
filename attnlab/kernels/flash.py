"""Pallas flash attention: softmax (FlashAttention-2) and sigmoid (FlashSigmoid), fwd + bwd.

Papers:

* "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning"
  (Dao, arXiv 2307.08691): the forward keeps a float32 running max ``m``, sum ``l`` and an
  unnormalised output per query block, rescales once at the end and saves only the
  log-sum-exp; the backward recomputes each tile's probabilities from it, with
  ``delta = rowsum(dO * O)``, one kernel for dq (parallel over q blocks) and one for dk/dv
  (parallel over k blocks), so no atomics are needed.
* "Theory, Analysis, and Best Practices for Sigmoid Self-Attention" (Ramapuram et al.,
  arXiv 2409.04431), FlashSigmoid: ``out = sigmoid(q k^T * scale + b) v`` with
  ``b = -log(kv_len)`` by default. There are no row statistics: the forward is a plain sum of
  ``sigmoid(s) v`` over tiles and the backward uses ``ds = dP * p * (1 - p)``.

How this implementation maps onto the papers, and where it departs from them:

* The tile loop visits only the tiles that the mask's block summary
  (``attnlab.masks``, EMPTY / PARTIAL / FULL) does not mark EMPTY, through a per-row table of
  tile indices with FULL tiles first (no elementwise mask) and PARTIAL tiles after (mask
  evaluated in-kernel from iotas, see ``attnlab.kernels.kmask``). The table is per batch
  element when the mask is data dependent (segment ids, lengths) and shared otherwise; the
  number of grid steps on TPU is the static maximum row count when the summary is static.
* Exponentials are base 2 (``exp2``) with ``log2(e)`` folded into the scale (as the Triton
  FlashAttention kernels do); the saved log-sum-exp is in base 2. A query row with no visible
  key returns zeros (attnlab's contract; the paper leaves it undefined).
* Extras applied to the logits inside the kernel, in attnlab's order: soft-capping
  ``c * tanh(s / c)`` (Gemma 2), the additive bias (any broadcast of ``[B, H, Tq, Tk]``),
  ALiBi ``-slope * |q_pos + q_offset - k_pos|`` computed from iotas (slopes never materialised
  as a bias), then the mask. Head masks scale each head's output outside the kernel.
* GQA / MQA: query head ``h`` reads kv head ``h // G`` through the K/V ``index_map``; the dk/dv
  kernel runs per kv head and loops over the ``G`` query heads of its group, so repeated K/V is
  never materialised (nor are per-query-head dk/dv).
* Bias gradients (only computed when the bias is differentiated, detected with custom_vjp
  symbolic zeros): ``dS`` tiles for a full-resolution bias, row sums for a bias broadcast over
  keys, column sums for one broadcast over queries, reduced over broadcast batch/heads in XLA.
  ALiBi slopes, scale and soft-cap get no gradient (as in ``attnlab.chunked_attention``).
* Sequence lengths are padded to whole blocks; the ragged last key block is always treated as
  PARTIAL (keys past ``kv_len`` masked); padded query rows are computed and dropped, and
  their zero output cotangent makes their backward contribution exactly zero.
* The sigmoid forward on GPU with 16-bit inputs uses ``sigmoid(x) = (1 + tanh(x / 2)) / 2``
  with the hardware ``tanh.approx`` (the FlashSigmoid paper's trick); float32 inputs and
  interpret mode use the exact formula.

Drivers (``kernel_backend``): "triton" (GPU; also the CPU interpret default) and "mosaic"
(TPU; tested on CPU in TPU interpret mode). See ``attnlab.kernels._kernels``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_derivatives as cd

from attnlab.core import common
from attnlab.core import masks as masks_lib
from attnlab.core import sigmoid as sigmoid_lib
from attnlab.core import softmax as softmax_lib
from attnlab.kernels import _kernels as K
from attnlab.kernels import autotune
from attnlab.kernels import kmask

Array = jax.Array

SUPPORTED_HEAD_DIMS = (64, 128, 256)
SUPPORTED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
BACKENDS = ("triton", "mosaic")

# Keyword arguments accepted on top of the attention contract.
KERNEL_KWARGS = ("block_q", "block_k", "block_q_bwd", "block_k_bwd", "num_warps", "num_stages",
                 "num_warps_bwd", "num_stages_bwd", "kernel_backend", "interpret")
_CONTRACT_KWARGS = ("q", "k", "v", "mask", "bias", "scale", "softcap", "alibi_slopes",
                    "q_offset", "head_mask", "return_weights")


def _pow2(n: int) -> bool:
  return n > 0 and n & (n - 1) == 0


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _next_pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


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
  allowed = set(_CONTRACT_KWARGS) | set(KERNEL_KWARGS)
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
  if d not in SUPPORTED_HEAD_DIMS:
    return f"head_dim {d} is not supported by the Pallas kernel (supported: {SUPPORTED_HEAD_DIMS})"
  if dv not in SUPPORTED_HEAD_DIMS:
    return f"v head_dim {dv} is not supported by the Pallas kernel (supported: {SUPPORTED_HEAD_DIMS})"
  reason = kmask.check_supported(call.get("mask"))
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
  platform = jax.default_backend()
  if platform not in ("cpu", "gpu", "tpu"):
    return f"platform {platform!r} has no Pallas lowering"
  if not call.get("interpret"):
    eff = backend or default_backend_for_platform(platform)
    if eff == "triton" and platform == "tpu":
      return "the triton driver does not run on TPU"
    if eff == "mosaic" and platform == "gpu":
      return "the mosaic driver does not run on GPU"
  for name in ("block_q", "block_k", "block_q_bwd", "block_k_bwd"):
    val = call.get(name)
    if val is not None and (not isinstance(val, (int, np.integer)) or not _pow2(int(val))
                            or val < 16):
      return f"{name} must be a power of two >= 16, got {val!r}"
  return None


# ------------------------------------------------------------------------------------------
# Tile tables.


def tile_states(mask, tq: int, tk: int, bq: int, bk: int, nq: int, nk: int):
  """EMPTY/PARTIAL/FULL per tile, ``[B|1, nq, nk]`` (numpy when static).

  The mask's block summary, the ragged last key block demoted to PARTIAL, and blocks that lie
  entirely in the padding (when the padded length is a multiple of a larger block) EMPTY.
  """
  rq, rk = -(-tq // bq), -(-tk // bk)
  summary = None if mask is None else mask.block_summary(tq, tk, bq, bk)
  states = kmask.tile_states(summary, tk, bk, rq, rk)
  xp = np if masks_lib.is_static(states) else jnp
  if (nq, nk) != (rq, rk):
    states = xp.pad(states, ((0, 0), (0, nq - rq), (0, nk - rk)),
                    constant_values=masks_lib.EMPTY)
  return states


def build_table(states, partial_first: bool = False):
  """Per row of tiles: FULL tile indices, then PARTIAL ones (or the reverse), then padding.

  ``states [Bs, R, C]`` -> ``(table [Bs, R, steps], n_first [Bs, R], n_tot [Bs, R], steps)``
  where ``n_first`` counts the first group (FULL tiles, or PARTIAL ones when
  ``partial_first``). Indices are ascending within a group. Padding repeats the row's last
  non-empty index (so a TPU index_map issues no new DMA); for a row with no tile it is 0.
  ``steps`` is the largest row count when ``states`` is static, else ``C``. numpy in, numpy
  out.
  """
  xp = np if masks_lib.is_static(states) else jnp
  first, second = ((masks_lib.PARTIAL, masks_lib.FULL) if partial_first else
                   (masks_lib.FULL, masks_lib.PARTIAL))
  key = xp.where(states == first, 0, xp.where(states == second, 1, 2))
  if xp is np:
    order = np.argsort(key, axis=-1, kind="stable")
  else:
    order = jnp.argsort(key, axis=-1, stable=True)
  n_first = (states == first).sum(-1)
  n_tot = (states != masks_lib.EMPTY).sum(-1)
  last = xp.take_along_axis(order, xp.maximum(n_tot - 1, 0)[..., None], axis=-1)
  pos = xp.arange(states.shape[-1])
  table = xp.where(pos < n_tot[..., None], order, last)
  table = xp.where(n_tot[..., None] == 0, 0, table)
  steps = max(int(n_tot.max()), 1) if xp is np else states.shape[-1]
  table = table[..., :steps]
  return (table.astype(xp.int32), n_first.astype(xp.int32), n_tot.astype(xp.int32), steps)


def _is_contiguous(table, n_tot) -> bool:
  """Every row's non-empty part is ``start, start + 1, ...`` (numpy tables only)."""
  steps = table.shape[-1]
  pos = np.arange(steps)
  expect = table[..., :1] + pos
  return bool(np.all((pos >= n_tot[..., None]) | (table == expect)))


def table_layout(states):
  """Tables for one kernel, ordered so that rows are contiguous runs when possible.

  Returns ``(flat (table, n_first, n_tot), steps, batched, partial_first, contiguous)``.
  Causal masks give contiguous rows with FULL tiles first for q-block rows (keys 0..i) and
  with the PARTIAL (diagonal) tile first for k-block rows (queries j..end).
  """
  batched = int(states.shape[0]) > 1
  choice = (build_table(states, False), False, False)
  if masks_lib.is_static(states):
    for partial_first in (False, True):
      built = build_table(states, partial_first)
      if _is_contiguous(built[0], built[2]):
        choice = (built, partial_first, True)
        break
  (table, n_first, n_tot, steps), partial_first, contiguous = choice
  flat = tuple(jnp.asarray(x).reshape(-1) for x in (table, n_first, n_tot))
  return flat, steps, batched, partial_first, contiguous


# ------------------------------------------------------------------------------------------
# Operand roles per driver layout.


def _roles(cfg: K.Config):
  if cfg.backend == "mosaic":  # [B, heads, T, D]
    return ("b", "h", "q", K.FULL_DIM), ("b", "kh", "k", K.FULL_DIM)
  return ("b", "q", "h", K.FULL_DIM), ("b", "k", "kh", K.FULL_DIM)  # [B, T, heads, D]


def _bias_roles(shape):
  b, h, tq, tk = shape
  return ("b" if b > 1 else "1", "h" if h > 1 else "1", "q" if tq > 1 else K.FULL_DIM,
          "k" if tk > 1 else K.FULL_DIM)


def _common_inputs(cfg, q, k, v, bias, slopes, scalars, qvecs, kvecs):
  q_roles, kv_roles = _roles(cfg)
  ins = [(K.Operand("q", q_roles), q), (K.Operand("k", kv_roles), k),
         (K.Operand("v", kv_roles), v),
         (K.Operand("scalars", ("n", "n"), scalar=True), scalars)]
  if bias is not None:
    ins.append((K.Operand("bias", _bias_roles(bias.shape)), bias))
  if slopes is not None:
    ins.append((K.Operand("slopes", ("n", "n"), scalar=True), slopes))
  for n, x in enumerate(qvecs):
    ins.append((K.Operand(f"qv{n}", ("b", "q", K.FULL_DIM)), x))
  for n, x in enumerate(kvecs):
    ins.append((K.Operand(f"kv{n}", ("b", K.FULL_DIM, "k")), x))
  return ins


def _stats_shape(cfg):
  return (cfg.batch, cfg.heads, cfg.q_pad, 1)


def _cost(cfg, kind, itemsize: int):
  """Rough CostEstimate for XLA's scheduler (visited tiles only)."""
  pairs = cfg.batch * cfg.heads * cfg.q_pad * cfg.kv_pad * cfg.visited_fraction
  mm = {"fwd": 2, "dq": 3, "dkv": 4}[kind]
  d = cfg.head_dim
  io = (cfg.batch * (cfg.heads * cfg.q_pad + 2 * cfg.kv_heads * cfg.kv_pad) * d * itemsize)
  from jax.experimental import pallas as pl
  return pl.CostEstimate(flops=int(2 * mm * pairs * d), transcendentals=int(pairs),
                         bytes_accessed=int(io * (1 if kind == "fwd" else 2)))


def _forward(cfg: K.Config, q, k, v, bias, slopes, scalars, qvecs, kvecs, tables):
  q_roles, _ = _roles(cfg)
  out_shape = (q.shape[:-1] + (cfg.v_dim,))
  outs = [(K.Operand("o", q_roles), jax.ShapeDtypeStruct(out_shape, q.dtype))]
  if cfg.normalizer == "softmax":
    outs.append((K.Operand("lse", ("b", "h", "q", K.FULL_DIM)),
                 jax.ShapeDtypeStruct(_stats_shape(cfg), jnp.float32)))
  if cfg.debug_counts:
    nq = cfg.n_rows("fwd")
    outs.append((K.Operand("counts", ("b", "h", "qblk", K.FULL_DIM, K.FULL_DIM)),
                 jax.ShapeDtypeStruct((cfg.batch, cfg.heads, nq, 1, K.LANES), jnp.int32)))
  ins = _common_inputs(cfg, q, k, v, bias, slopes, scalars, qvecs, kvecs)
  res = K.call(cfg, "fwd", ins, outs, tables,
               cost=_cost(cfg, "fwd", q.dtype.itemsize))
  return res["o"], res.get("lse"), res.get("counts")


def _backward(cfg: K.Config, res, do, need_dbias: bool):
  (q, k, v, bias, slopes, scalars, qvecs, kvecs, _, dq_tables, dkv_tables, out, lse,
   vis_dq) = res
  q_roles, kv_roles = _roles(cfg)
  ins = _common_inputs(cfg, q, k, v, bias, slopes, scalars, qvecs, kvecs)
  ins.append((K.Operand("do", q_roles), do))
  if cfg.normalizer == "softmax":
    if cfg.backend == "mosaic":
      delta = jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)[..., None]
    else:
      delta = jnp.einsum("bqhd,bqhd->bhq", do.astype(jnp.float32), out.astype(jnp.float32))
      delta = delta[..., None]
    stats_roles = ("b", "h", "q", K.FULL_DIM)
    ins += [(K.Operand("lse", stats_roles), lse), (K.Operand("delta", stats_roles), delta)]

  dq_outs = [(K.Operand("dq", q_roles), jax.ShapeDtypeStruct(q.shape, q.dtype))]
  dkv_outs = [(K.Operand("dk", kv_roles), jax.ShapeDtypeStruct(k.shape, k.dtype)),
              (K.Operand("dv", kv_roles), jax.ShapeDtypeStruct(v.shape, v.dtype))]
  f32 = jnp.float32
  bh = (cfg.batch, cfg.heads)
  if need_dbias:
    if cfg.bias_q_full and cfg.bias_k_full:
      dq_outs.append((K.Operand("ds", ("b", "h", "q", "k")),
                      jax.ShapeDtypeStruct(bh + (cfg.q_pad, cfg.kv_pad), f32)))
    elif cfg.bias_k_full:
      dkv_outs.append((K.Operand("dbias_cols", ("b", "h", K.FULL_DIM, "k")),
                       jax.ShapeDtypeStruct(bh + (1, cfg.kv_pad), f32)))
    else:
      dq_outs.append((K.Operand("dbias_rows", ("b", "h", "q", K.FULL_DIM)),
                      jax.ShapeDtypeStruct(bh + (cfg.q_pad, 1), f32)))
  itemsize = q.dtype.itemsize
  r_dq = K.call(cfg, "dq", ins, dq_outs, dq_tables, cost=_cost(cfg, "dq", itemsize))
  r_dkv = K.call(cfg, "dkv", ins, dkv_outs, dkv_tables, cost=_cost(cfg, "dkv", itemsize))
  dbias = None
  if need_dbias:
    if "ds" in r_dq:
      bq, bk = cfg.blocks("dq")
      vis = jnp.repeat(jnp.repeat(vis_dq, bq, axis=1), bk, axis=2)  # [Bs, q_pad, kv_pad]
      full = jnp.where(vis[:, None], r_dq["ds"], 0.0)
    elif "dbias_cols" in r_dkv:
      full = r_dkv["dbias_cols"]
    else:
      full = r_dq["dbias_rows"]
    bb, hb, tqb, tkb = cfg.bias_shape
    axes = tuple(a for a, n in ((0, bb), (1, hb), (2, tqb), (3, tkb)) if n == 1
                 and full.shape[a] != 1)
    if axes:
      full = full.sum(axis=axes, keepdims=True)
    dbias = full
  return r_dq["dq"], r_dkv["dk"], r_dkv["dv"], dbias


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg, q, k, v, bias, slopes, scalars, qvecs, kvecs, fwd_tables, dq_tables,
           dkv_tables, vis_dq):
  out, _, _ = _forward(cfg, q, k, v, bias, slopes, scalars, qvecs, kvecs, fwd_tables)
  return out


def _flash_fwd(cfg, *args):
  bias_arg = args[3]
  need_dbias = isinstance(bias_arg, cd.CustomVJPPrimal) and bool(bias_arg.perturbed)
  (q, k, v, bias, slopes, scalars, qvecs, kvecs, fwd_tables, dq_tables, dkv_tables,
   vis_dq) = cd.custom_vjp_primal_tree_values(args)
  out, lse, _ = _forward(cfg, q, k, v, bias, slopes, scalars, qvecs, kvecs, fwd_tables)
  res = (q, k, v, bias, slopes, scalars, qvecs, kvecs, None, dq_tables, dkv_tables, out, lse,
         vis_dq)
  return out, (res, () if need_dbias else None)


def _flash_bwd(cfg, residuals, do):
  res, flag = residuals
  out = res[11]
  if isinstance(do, cd.SymbolicZero):
    do = jnp.zeros(out.shape, out.dtype)
  dq, dk, dv, dbias = _backward(cfg, res, do.astype(out.dtype), need_dbias=flag is not None)
  bias = res[3]
  if dbias is not None:
    dbias = dbias.reshape(bias.shape).astype(bias.dtype)
  return (dq, dk, dv, dbias, None, None, None, None, None, None, None, None)


_flash.defvjp(_flash_fwd, _flash_bwd, symbolic_zeros=True)


# ------------------------------------------------------------------------------------------
# Public entry point.


def _pad_axis(x, axis, size, value=0):
  pad = size - x.shape[axis]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def _clip_block(block: int, n: int) -> int:
  return int(min(block, max(16, _next_pow2(n))))


def flash_attention(q: Array, k: Array, v: Array, *, mask: masks_lib.Mask | None = None,
                    bias: Array | None = None, scale: float | None = None,
                    softcap: float | None = None, alibi_slopes: Array | None = None,
                    q_offset: Any = 0, head_mask: Array | None = None,
                    return_weights: bool = False, normalizer: str = "softmax",
                    sigmoid_bias: float | None = None, block_q: int | None = None,
                    block_k: int | None = None, block_q_bwd: int | None = None,
                    block_k_bwd: int | None = None, num_warps: int | None = None,
                    num_stages: int | None = None, num_warps_bwd: int | None = None,
                    num_stages_bwd: int | None = None, kernel_backend: str | None = None,
                    interpret: Any = None, debug_counts: bool = False):
  """Flash attention with attnlab's contract (see ``attnlab.attention``).

  q ``[B, Tq, H, D]``, k ``[B, Tk, K, D]``, v ``[B, Tk, K, Dv]`` -> ``[B, Tq, H, Dv]``.

  Kernel options: ``block_q`` / ``block_k`` (forward tiles) and ``block_q_bwd`` /
  ``block_k_bwd`` (backward tiles), powers of two; default from ``attnlab.kernels.autotune``
  (fixed small tiles in interpret mode). ``num_warps`` / ``num_stages`` (and ``*_bwd``) are
  Triton launch parameters. ``kernel_backend`` "triton" | "mosaic" (default from the
  platform), ``interpret`` (default: True on CPU; a ``pltpu.InterpretParams`` for mosaic).
  ``debug_counts=True`` returns ``(out, counts)`` with ``counts [B, H, n_q_blocks, 2]`` the
  number of FULL and PARTIAL tiles the forward kernel processed per q block (not
  differentiable; for tests).
  """
  if normalizer not in ("softmax", "sigmoid"):
    raise ValueError(f"normalizer must be 'softmax' or 'sigmoid', got {normalizer!r}")
  call = dict(q=q, k=k, v=v, mask=mask, kernel_backend=kernel_backend, block_q=block_q,
              block_k=block_k, block_q_bwd=block_q_bwd, block_k_bwd=block_k_bwd,
              scale=scale, softcap=softcap, interpret=interpret)
  if normalizer == "sigmoid":
    call["sigmoid_bias"] = sigmoid_bias
  reason = unsupported_reason(normalizer=normalizer, **call)
  if reason:
    raise ValueError(f"Pallas flash attention does not support this call: {reason}")
  mask, bias, scale, alibi, head_mask_ = softmax_lib.prepare(q, k, v, mask, bias, scale,
                                                             alibi_slopes, head_mask)
  b, tq, h, d = q.shape
  tk, kh, dv = k.shape[1], k.shape[2], v.shape[-1]
  platform = jax.default_backend()
  backend = kernel_backend or default_backend_for_platform(platform)
  if interpret is None:
    interpret = default_interpret(backend, platform)

  given = dict(block_q=block_q, block_k=block_k, block_q_bwd=block_q_bwd,
               block_k_bwd=block_k_bwd, num_warps=num_warps, num_stages=num_stages,
               num_warps_bwd=num_warps_bwd, num_stages_bwd=num_stages_bwd)
  tuned = given
  if any(x is None for x in given.values()):
    tuned = autotune.block_config(
        backend=backend, interpret=bool(interpret), dtype=q.dtype, head_dim=d, q_len=tq,
        kv_len=tk, mask_kind=kmask.mask_kind(mask), normalizer=normalizer,
        measure=None if interpret or platform not in ("gpu", "tpu") else functools.partial(
            _measure, q=q, k=k, v=v, mask=mask, normalizer=normalizer, backend=backend))
  pick = lambda given, name: tuned[name] if given is None else given
  bq = _clip_block(pick(block_q, "block_q"), tq)
  bk = _clip_block(pick(block_k, "block_k"), tk)
  bqb = _clip_block(pick(block_q_bwd, "block_q_bwd"), tq)
  bkb = _clip_block(pick(block_k_bwd, "block_k_bwd"), tk)
  q_pad, kv_pad = _round_up(tq, max(bq, bqb)), _round_up(tk, max(bk, bkb))

  # Mask program and the per-batch int32 scalars it reads (slot 0: the call's q_offset).
  compiled = kmask.compile_mask(mask)
  scal = [jnp.asarray(q_offset, jnp.int32).reshape(1)]
  if compiled is not None:
    scal += compiled.scalars
  scalars = jnp.stack([jnp.broadcast_to(jnp.asarray(s, jnp.int32).reshape(-1), (b,))
                       for s in scal], axis=1)  # [B, S]
  qvecs = tuple(_pad_axis(jnp.broadcast_to(x, (b, tq)), 1, q_pad)[:, :, None]
                for x in (compiled.q_vecs if compiled else ()))
  kvecs = tuple(_pad_axis(jnp.broadcast_to(x, (b, tk)), 1, kv_pad)[:, None, :]
                for x in (compiled.k_vecs if compiled else ()))

  # Tile tables: forward (rows = q blocks), dq (q blocks) and dk/dv (rows = k blocks).
  st_fwd = tile_states(mask, tq, tk, bq, bk, q_pad // bq, kv_pad // bk)
  st_bwd = tile_states(mask, tq, tk, bqb, bkb, q_pad // bqb, kv_pad // bkb)
  fwd_tables, fwd_steps, fwd_batched, fwd_pf, fwd_contig = table_layout(st_fwd)
  dq_tables, dq_steps, bwd_batched, dq_pf, dq_contig = table_layout(st_bwd)
  dkv_tables, dkv_steps, _, dkv_pf, dkv_contig = table_layout(st_bwd.transpose(0, 2, 1))
  vis_dq = jnp.asarray(st_bwd != masks_lib.EMPTY)
  frac = (float((np.asarray(st_fwd) != masks_lib.EMPTY).mean())
          if masks_lib.is_static(st_fwd) else 1.0)

  slopes = None if alibi is None else jnp.broadcast_to(alibi.astype(jnp.float32), (b, h))
  if bias is not None:
    if bias.shape[2] > 1:
      bias = _pad_axis(bias, 2, q_pad)
    if bias.shape[3] > 1:
      bias = _pad_axis(bias, 3, kv_pad)
  qp, kp, vp = _pad_axis(q, 1, q_pad), _pad_axis(k, 1, kv_pad), _pad_axis(v, 1, kv_pad)
  if backend == "mosaic":
    qp, kp, vp = (x.transpose(0, 2, 1, 3) for x in (qp, kp, vp))

  is_16bit = q.dtype in (jnp.bfloat16, jnp.float16)
  cfg = K.Config(
      normalizer=normalizer, scale=float(scale),
      softcap=None if softcap is None else float(softcap),
      sigmoid_bias=sigmoid_lib.default_sigmoid_bias(tk, sigmoid_bias),
      batch=b, heads=h, kv_heads=kh, head_dim=d, v_dim=dv, q_len=tq, kv_len=tk,
      q_pad=q_pad, kv_pad=kv_pad, block_q=bq, block_k=bk, block_q_bwd=bqb, block_k_bwd=bkb,
      fwd_steps=fwd_steps, dq_steps=dq_steps, dkv_steps=dkv_steps,
      fwd_table_batched=fwd_batched, bwd_table_batched=bwd_batched,
      partial_first=(fwd_pf, dq_pf, dkv_pf), contiguous=(fwd_contig, dq_contig, dkv_contig),
      bias_shape=None if bias is None else tuple(
          1 if n == 1 else n for n in bias.shape),
      has_alibi=alibi is not None,
      mask_program=None if compiled is None else compiled.program,
      n_q_vecs=len(qvecs), n_k_vecs=len(kvecs), backend=backend,
      interpret=interpret,
      num_warps=pick(num_warps, "num_warps"), num_stages=pick(num_stages, "num_stages"),
      num_warps_bwd=pick(num_warps_bwd, "num_warps_bwd"),
      num_stages_bwd=pick(num_stages_bwd, "num_stages_bwd"),
      fast_math=(backend == "triton" and not interpret and is_16bit),
      precision=None if is_16bit else jax.lax.Precision.HIGHEST,
      debug_counts=bool(debug_counts), visited_fraction=frac)

  if debug_counts:
    out, _, counts = _forward(cfg, qp, kp, vp, bias, slopes, scalars, qvecs, kvecs,
                              fwd_tables)
  else:
    out = _flash(cfg, qp, kp, vp, bias, slopes, scalars, qvecs, kvecs, fwd_tables, dq_tables,
                 dkv_tables, vis_dq)
  if backend == "mosaic":
    out = out.transpose(0, 2, 1, 3)
  out = common.apply_head_mask(out[:, :tq], head_mask_)
  if debug_counts:
    return out, counts[:, :, :, 0, :2]
  if not return_weights:
    return out
  ref = sigmoid_lib.sigmoid_attention if normalizer == "sigmoid" else (
      softmax_lib.softmax_attention)
  extra = {"sigmoid_bias": sigmoid_bias} if normalizer == "sigmoid" else {}
  _, weights = ref(q, k, v, mask=mask, bias=bias if bias is None else bias[
      :, :, :tq if bias.shape[2] > 1 else None, :tk if bias.shape[3] > 1 else None],
      scale=scale, softcap=softcap, alibi_slopes=alibi_slopes, q_offset=q_offset,
      return_weights=True, **extra)
  return out, weights


def _measure(cfg_dict, *, q, k, v, mask, normalizer, backend, direction="fwd",
             interpret=False, runs: int = 5):
  """Median seconds of one candidate on random inputs shaped like the call (autotuner).

  Usually called while the user's function is being traced; the candidate runs in a helper
  thread, which starts with JAX's trace state empty, so it executes for real instead of being
  staged into the caller's computation. Only the shapes and dtypes of ``q, k, v`` are used; a
  mask with traced leaves is replaced by none.
  """
  import concurrent.futures
  static_mask = mask if mask is not None and all(
      not isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(mask)) else None
  specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v)]
  kw = dict(mask=static_mask, normalizer=normalizer, kernel_backend=backend,
            interpret=interpret, **cfg_dict)
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    return pool.submit(_time_candidate, specs, kw, direction, runs).result()


def _time_candidate(specs, kw, direction, runs):
  import time
  try:
    rng = np.random.default_rng(0)
    args = [jnp.asarray(rng.standard_normal(s.shape, np.float32)).astype(s.dtype)
            for s in specs]
    if direction == "fwd":
      fn = jax.jit(lambda a, b_, c: flash_attention(a, b_, c, **kw))
    else:
      def loss(a, b_, c):
        return flash_attention(a, b_, c, **kw).astype(jnp.float32).sum()
      fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times.append(time.perf_counter() - t0)
    return float(np.median(times))
  except Exception:  # a candidate that does not compile (shared memory, registers) loses
    return math.inf
