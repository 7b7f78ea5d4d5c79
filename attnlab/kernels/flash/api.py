"""Public entry point of the Pallas flash kernels, its custom_vjp, and their registration.

* ``flash_attention(q, k, v, ...)``: attnlab's attention contract on top of the kernels --
  support check, tile sizes (``autotune``), mask program and scalars (``masks``), tile tables
  (``tables``), padding to whole blocks and the driver's layout, the static ``Config``; then
  the forward (``forward.run``) under a custom_vjp whose backward is ``backward.run``. Head
  masks and ``return_weights`` are handled around the kernel.
* ``flash_softmax_attention`` / ``flash_sigmoid_attention``: the two normalisers.
* Importing this module registers them as the ``"pallas"`` implementation of the "softmax"
  and "sigmoid" mechanisms (``supports``: ``support.unsupported_reason``; "auto" picks them on
  GPU and TPU).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_derivatives

from attnlab.core import chunked
from attnlab.core import common
from attnlab.core import masks as masks_lib
from attnlab.core import registry
from attnlab.core.mechanisms import sigmoid as sigmoid_lib
from attnlab.core.mechanisms import softmax as softmax_lib
from attnlab.kernels.flash import autotune
from attnlab.kernels.flash import backward
from attnlab.kernels.flash import forward
from attnlab.kernels.flash import masks
from attnlab.kernels.flash import ref_reads
from attnlab.kernels.flash import sharding
from attnlab.kernels.flash import support
from attnlab.kernels.flash import tables
from attnlab.kernels.flash.config import Config
from attnlab.kernels.flash.support import unsupported_reason

Array = jax.Array


# ------------------------------------------------------------------------------------------
# custom_vjp: forward kernel, then dq and dk/dv kernels from its residuals.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg, q, k, v, bias, slopes, scalars, qvecs, kvecs, fwd_tables, dq_tables,
           dkv_tables, vis_dq, mods=()):
  out, _, _ = forward.run(cfg, q, k, v, bias, slopes, scalars, qvecs, kvecs, fwd_tables, mods)
  return out


def _flash_fwd(cfg, *args):
  bias_arg = args[3]
  need_dbias = (isinstance(bias_arg, custom_derivatives.CustomVJPPrimal)
                and bool(bias_arg.perturbed))
  (q, k, v, bias, slopes, scalars, qvecs, kvecs, fwd_tables, dq_tables, dkv_tables,
   vis_dq, mods) = custom_derivatives.custom_vjp_primal_tree_values(args)
  out, lse, _ = forward.run(cfg, q, k, v, bias, slopes, scalars, qvecs, kvecs, fwd_tables,
                            mods)
  res = (q, k, v, bias, slopes, scalars, qvecs, kvecs, mods, dq_tables, dkv_tables, out, lse,
         vis_dq)
  return out, (res, () if need_dbias else None)


def _flash_bwd(cfg, residuals, do):
  res, flag = residuals
  out = res[11]
  if isinstance(do, custom_derivatives.SymbolicZero):
    do = jnp.zeros(out.shape, out.dtype)
  dq, dk, dv, dbias = backward.run(cfg, res, do.astype(out.dtype), need_dbias=flag is not None)
  bias = res[3]
  if dbias is not None:
    dbias = dbias.reshape(bias.shape).astype(bias.dtype)
  # The score_mod's captured arrays get their gradient from _mod_grads (below), not here.
  return (dq, dk, dv, dbias, None, None, None, None, None, None, None, None,
          tuple(None for _ in res[8]))


_flash.defvjp(_flash_fwd, _flash_bwd, symbolic_zeros=True)


# ------------------------------------------------------------------------------------------
# Gradients of a score_mod's captured arrays: an identity on the kernel's output whose
# backward runs the chunked path's backward (XLA, O(T) memory) for those arrays only, and only
# when they are differentiated. The kernels compute dq, dk, dv (and d bias) themselves.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _mod_grads(static, out, inputs, mods):
  del static, inputs, mods
  return out


def _mod_grads_fwd(static, out, inputs, mods):
  flat = jax.tree.leaves(mods, is_leaf=lambda x: isinstance(
      x, custom_derivatives.CustomVJPPrimal))
  need = any(bool(getattr(m, "perturbed", False)) for m in flat)
  out, inputs, mods = custom_derivatives.custom_vjp_primal_tree_values((out, inputs, mods))
  return out, (inputs, mods, need)


def _mod_grads_bwd(static, res, g):
  inputs, mods, need = res
  zeros = jax.tree.map(lambda x: None, inputs)
  if not need or isinstance(g, custom_derivatives.SymbolicZero):
    return g, zeros, tuple(None for _ in mods)
  fn, bq, bk, scale, softcap, normalizer, sigmoid_bias = static
  q, k, v, mask, bias, slopes, q_offset = inputs

  def run(*m):
    return chunked.chunked_attention(
        q, k, v, mask=mask, bias=bias, scale=scale, softcap=softcap, alibi_slopes=slopes,
        q_offset=q_offset, normalizer=normalizer, sigmoid_bias=sigmoid_bias, block_q=bq,
        block_k=bk, score_mod=chunked.ConvertedScoreMod(fn, m, bq, bk))

  _, vjp = jax.vjp(run, *mods)
  return g, zeros, tuple(vjp(g.astype(q.dtype)))


_mod_grads.defvjp(_mod_grads_fwd, _mod_grads_bwd, symbolic_zeros=True)


def _convert_tile_mod(score_mod, bq: int, bk: int):
  """``score_mod`` for one kernel tile (``s [bq, bk]``, scalar batch and head,
  ``q_idx [bq, 1]``, ``kv_idx [1, bk]``) as ``(fn(s, b, h, q_idx, kv_idx, *consts), consts)``
  with every array it closes over hoisted into ``consts`` (``common.hoist_constants``)."""
  s0 = jnp.zeros((bq, bk), jnp.float32)
  idx0 = (jnp.int32(0), jnp.int32(0), jnp.zeros((bq, 1), jnp.int32),
          jnp.zeros((1, bk), jnp.int32))
  return common.hoist_constants(lambda s, *idx: common.call_score_mod(score_mod, s, idx),
                                s0, *idx0)


def _convert_tile_mask(mask: masks_lib.FunctionMask, bq: int, bk: int):
  """A ``FunctionMask`` on one kernel tile (scalar batch, ``q_idx [bq, 1]`` absolute,
  ``kv_idx [1, bk]``) -> bool ``[bq, bk]``, as ``(fn, consts)`` with every array it closes over
  hoisted (``common.hoist_constants``)."""
  idx0 = (jnp.int32(0), jnp.zeros((bq, 1), jnp.int32), jnp.zeros((1, bk), jnp.int32))
  return common.hoist_constants(
      lambda b, qi, ki: jnp.broadcast_to(mask.evaluate_at(b, qi, ki), (bq, bk)), *idx0)


# ------------------------------------------------------------------------------------------
# Public entry point.


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _next_pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


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
                    interpret: Any = None, debug_counts: bool = False, score_mod: Any = None,
                    tile_states: Any = None):
  """Flash attention with attnlab's contract (see ``attnlab.attention``).

  q ``[B, Tq, H, D]``, k ``[B, Tk, K, D]``, v ``[B, Tk, K, Dv]`` -> ``[B, Tq, H, Dv]``.

  Kernel options: ``block_q`` / ``block_k`` (forward tiles) and ``block_q_bwd`` /
  ``block_k_bwd`` (backward tiles), powers of two; default from ``attnlab.kernels.flash.autotune``
  (fixed small tiles in interpret mode). ``num_warps`` / ``num_stages`` (and ``*_bwd``) are
  Triton launch parameters. ``kernel_backend`` "triton" | "mosaic" (default from the
  platform), ``interpret`` (default: True on CPU; a ``pltpu.InterpretParams`` for mosaic).
  ``debug_counts=True`` returns ``(out, counts)`` with ``counts [B, H, n_q_blocks, 2]`` the
  number of FULL and PARTIAL tiles the forward kernel processed per q block (not
  differentiable; for tests).

  ``score_mod(score, batch, head, q_idx, kv_idx)`` is traced into the three kernel bodies
  (called per tile with ``score [bq, bk]``, scalar ``batch`` / ``head``, ``q_idx [bq, 1]``,
  ``kv_idx [1, bk]``), after bias and ALiBi; its vjp gives the tiles' d logits in the backward
  kernels. The arrays it closes over (all hoisted, ``common.hoist_constants``) are kernel
  inputs left in their refs: indexing them (``table[q_idx - kv_idx, h]``, ``bias[q_idx,
  kv_idx]``) reads only the tile's elements (``ref_reads``); other uses read them whole. Their
  gradients, when asked for, come from the chunked path's backward (XLA), not the kernels.
  The Mosaic TPU driver loads them whole (its refs take no vector indexers); gathers on the
  loaded values lower in interpret mode, and natively only where Mosaic supports them, so a
  FunctionMask is refused on native Mosaic. Untested natively: no GPU/TPU was lent.

  ``tile_states(block_q, block_k, n_q_tiles, n_k_tiles)`` -> int ``[B|1, nq, nk]``
  (EMPTY / PARTIAL / FULL, numpy or traced): data-dependent tile states (e.g. MoBA's selected
  blocks), called for the forward and for the backward tiles and combined with the mask's
  states by ``min`` (``tables.restrict``); with ``B`` > 1 every batch element gets its own
  tables. The kernels visit only the tiles left non-empty.
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
  common.check_score_mod(score_mod)
  if tile_states is not None and return_weights:  # the dense weights know the mask only
    raise ValueError("Pallas flash attention: return_weights=True cannot be combined with "
                     "tile_states (the weights would ignore the removed tiles)")
  if score_mod is not None and (debug_counts or sharding.is_explicitly_sharded(
      (q, k, v, bias, alibi_slopes, q_offset))):
    raise ValueError("Pallas flash attention: score_mod is not supported with debug_counts or "
                     "explicitly sharded inputs (use jax.shard_map, or implementation="
                     "'chunked')")
  if tile_states is not None and sharding.is_explicitly_sharded((q, k, v, bias, alibi_slopes,
                                                                 q_offset)):
    raise ValueError("Pallas flash attention: tile_states is not supported with explicitly "
                     "sharded inputs (use jax.shard_map)")
  if not debug_counts and sharding.is_explicitly_sharded((q, k, v, bias, alibi_slopes,
                                                          q_offset)):
    kernel = functools.partial(
        flash_attention, mask=mask, scale=scale, softcap=softcap, normalizer=normalizer,
        sigmoid_bias=sigmoid_bias, block_q=block_q, block_k=block_k, block_q_bwd=block_q_bwd,
        block_k_bwd=block_k_bwd, num_warps=num_warps, num_stages=num_stages,
        num_warps_bwd=num_warps_bwd, num_stages_bwd=num_stages_bwd,
        kernel_backend=kernel_backend, interpret=interpret)
    out = sharding.run(kernel, q, k, v, bias=bias, alibi_slopes=alibi_slopes,
                       q_offset=q_offset)
    head_mask_ = common.check_head_vector(head_mask, "head_mask", q.shape[0], q.shape[2])
    out = common.apply_head_mask(out, head_mask_)
    return (out, _reference_weights(q, k, v, mask, bias, scale, softcap, alibi_slopes,
                                    q_offset, normalizer, sigmoid_bias)) if return_weights else out
  mask, bias, scale, alibi, head_mask_ = softmax_lib.prepare(q, k, v, mask, bias, scale,
                                                             alibi_slopes, head_mask)
  b, tq, h, d_in = q.shape
  tk, kh, dv_in = k.shape[1], k.shape[2], v.shape[-1]
  # Head dims that are not a native kernel width are zero-padded: zero q/k columns add nothing
  # to the logits (the scale was fixed from the true head dim above), zero v columns give zero
  # output columns, sliced off below; the padded columns' gradients are sliced off by jnp.pad's
  # transpose.
  d, dv = support.padded_head_dim(d_in), support.padded_head_dim(dv_in)
  q_in, k_in, v_in = q, k, v
  q, k, v = _pad_axis(q, 3, d), _pad_axis(k, 3, d), _pad_axis(v, 3, dv)
  platform = jax.default_backend()
  backend = kernel_backend or support.default_backend_for_platform(platform)
  if interpret is None:
    interpret = support.default_interpret(backend, platform)

  given = dict(block_q=block_q, block_k=block_k, block_q_bwd=block_q_bwd,
               block_k_bwd=block_k_bwd, num_warps=num_warps, num_stages=num_stages,
               num_warps_bwd=num_warps_bwd, num_stages_bwd=num_stages_bwd)
  tuned = given
  if any(x is None for x in given.values()):
    tuned = autotune.block_config(
        backend=backend, interpret=bool(interpret), dtype=q.dtype, head_dim=d, q_len=tq,
        kv_len=tk, mask_kind=masks.mask_kind(mask), normalizer=normalizer,
        measure=None if interpret or platform not in ("gpu", "tpu") else functools.partial(
            autotune.measure_candidate, flash_attention, q=q, k=k, v=v, mask=mask,
            normalizer=normalizer, backend=backend))
  pick = lambda given, name: tuned[name] if given is None else given
  bq = _clip_block(pick(block_q, "block_q"), tq)
  bk = _clip_block(pick(block_k, "block_k"), tk)
  bqb = _clip_block(pick(block_q_bwd, "block_q_bwd"), tq)
  bkb = _clip_block(pick(block_k_bwd, "block_k_bwd"), tk)
  q_pad, kv_pad = _round_up(tq, max(bq, bqb)), _round_up(tk, max(bk, bkb))

  # Mask program and the per-batch int32 scalars it reads (slot 0: the call's q_offset).
  compiled = masks.compile_mask(mask)
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
  st_fwd = tables.tile_states(mask, tq, tk, bq, bk, q_pad // bq, kv_pad // bk)
  st_bwd = tables.tile_states(mask, tq, tk, bqb, bkb, q_pad // bqb, kv_pad // bkb)
  if tile_states is not None:
    st_fwd = tables.restrict(st_fwd, tile_states, b, bq, bk)
    st_bwd = tables.restrict(st_bwd, tile_states, b, bqb, bkb)
  fwd_tables, fwd_steps, fwd_batched, fwd_pf, fwd_contig = tables.table_layout(st_fwd)
  dq_tables, dq_steps, bwd_batched, dq_pf, dq_contig = tables.table_layout(st_bwd)
  dkv_tables, dkv_steps, _, dkv_pf, dkv_contig = tables.table_layout(
      st_bwd.transpose(0, 2, 1))
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

  mods, mod_fns, mod_static = (), (None, None), None
  if score_mod is not None:
    bq_c, bk_c = min(chunked.DEFAULT_BLOCK_Q, tq), min(chunked.DEFAULT_BLOCK_K, tk)
    # For the captured arrays' gradients (chunked backward): the differentiable ones only.
    fn_c, mods = chunked.convert_score_mod(score_mod, b, h, bq_c, bk_c)
    # For the kernels: every captured array, as inputs.
    fn_f, kmods = _convert_tile_mod(score_mod, bq, bk)
    fn_b, kmods_b = _convert_tile_mod(score_mod, bqb, bkb)
    if [jnp.shape(m) for m in kmods] != [jnp.shape(m) for m in kmods_b]:
      raise ValueError("score_mod captured different arrays on different tile shapes; "
                       "use implementation='chunked'")
    # The kernels index the captured arrays in their refs (ref_reads), never load them whole.
    mod_fns = (ref_reads.split(fn_f.jaxpr, len(kmods)),
               ref_reads.split(fn_b.jaxpr, len(kmods_b)))
    mod_static = (fn_c, bq_c, bk_c, float(scale), None if softcap is None else float(softcap),
                  normalizer, sigmoid_bias)
  else:
    kmods = ()
  # FunctionMasks: traced at the forward and backward tile shapes; their captured arrays
  # follow the score_mod's as "mod<n>" inputs, read by index in the kernels (ref_reads).
  mask_fns = []
  for fm in (compiled.functions if compiled is not None else ()):
    (jf, cf), (jb, cb) = _convert_tile_mask(fm, bq, bk), _convert_tile_mask(fm, bqb, bkb)
    if [jnp.shape(c) for c in cf] != [jnp.shape(c) for c in cb]:
      raise ValueError("FunctionMask captured different arrays on different tile shapes; "
                       "use implementation='chunked'")
    mask_fns.append((ref_reads.closed(jf.jaxpr), ref_reads.closed(jb.jaxpr), len(kmods),
                     len(cf), (fm.batch_size_ or 1) > 1))
    kmods = tuple(kmods) + tuple(cf)
  mods_in = tuple(jnp.reshape(m, (1,)) if jnp.ndim(m) == 0 else jnp.asarray(m) for m in kmods)

  is_16bit = q.dtype in (jnp.bfloat16, jnp.float16)
  cfg = Config(
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
      debug_counts=bool(debug_counts), visited_fraction=frac,
      score_mod_fwd=mod_fns[0], score_mod_bwd=mod_fns[1],
      mod_shapes=tuple(tuple(jnp.shape(m)) for m in kmods), mask_functions=tuple(mask_fns))

  if debug_counts:
    out, _, counts = forward.run(cfg, qp, kp, vp, bias, slopes, scalars, qvecs, kvecs,
                                 fwd_tables, mods_in)
  else:
    out = _flash(cfg, qp, kp, vp, bias, slopes, scalars, qvecs, kvecs, fwd_tables, dq_tables,
                 dkv_tables, vis_dq, jax.lax.stop_gradient(mods_in))
  if backend == "mosaic":
    out = out.transpose(0, 2, 1, 3)
  out = out[:, :tq, :, :dv_in]
  q, k, v = q_in, k_in, v_in
  if mods and not debug_counts:
    bias_u = bias if bias is None else bias[
        :, :, :tq if bias.shape[2] > 1 else None, :tk if bias.shape[3] > 1 else None]
    out = _mod_grads(mod_static, out, (q, k, v, mask, bias_u, slopes, jnp.asarray(q_offset)),
                     tuple(mods))
  out = common.apply_head_mask(out, head_mask_)
  if debug_counts:
    return out, counts[:, :, :, 0, :2]
  if not return_weights:
    return out
  bias = bias if bias is None else bias[
      :, :, :tq if bias.shape[2] > 1 else None, :tk if bias.shape[3] > 1 else None]
  return out, _reference_weights(q, k, v, mask, bias, scale, softcap, alibi_slopes, q_offset,
                                 normalizer, sigmoid_bias, score_mod)


def _reference_weights(q, k, v, mask, bias, scale, softcap, alibi_slopes, q_offset, normalizer,
                       sigmoid_bias, score_mod=None):
  """``[B, H, Tq, Tk]`` attention weights from the dense reference (``return_weights``)."""
  ref = sigmoid_lib.sigmoid_attention if normalizer == "sigmoid" else (
      softmax_lib.softmax_attention)
  extra = {"sigmoid_bias": sigmoid_bias} if normalizer == "sigmoid" else {}
  _, weights = ref(q, k, v, mask=mask, bias=bias, scale=scale, softcap=softcap,
                   alibi_slopes=alibi_slopes, q_offset=q_offset, return_weights=True,
                   score_mod=score_mod, **extra)
  return weights


# ------------------------------------------------------------------------------------------
# The two normalisers, registered as the "pallas" implementation.


def flash_softmax_attention(q, k, v, **kwargs):
  """FlashAttention-2 softmax attention (arXiv 2307.08691); see ``flash_attention``."""
  return flash_attention(q, k, v, normalizer="softmax", **kwargs)


def flash_sigmoid_attention(q, k, v, **kwargs):
  """FlashSigmoid attention (arXiv 2409.04431); see ``flash_attention``."""
  return flash_attention(q, k, v, normalizer="sigmoid", **kwargs)


def _supports(normalizer: str):
  """``supports`` of one mechanism's pallas implementation: the mechanism sets the normaliser,
  so a call passing ``normalizer`` (or the other mechanism's ``sigmoid_bias``) is refused."""
  refused = ("normalizer",) if normalizer == "sigmoid" else ("normalizer", "sigmoid_bias")

  def supports(**call: Any) -> str | None:
    bad = sorted(set(call) & set(refused))
    if bad:
      return f"unexpected arguments {bad}"
    return unsupported_reason(normalizer=normalizer, **call)
  return supports


def _register() -> None:
  registry.register_implementation("softmax", "pallas", flash_softmax_attention,
                                   supports=_supports("softmax"), auto_platforms=("gpu", "tpu"))
  registry.register_implementation("sigmoid", "pallas", flash_sigmoid_attention,
                                   supports=_supports("sigmoid"), auto_platforms=("gpu", "tpu"))


_register()
