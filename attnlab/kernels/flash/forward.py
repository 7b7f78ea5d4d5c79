"""The forward kernel: ``out`` (and, for softmax, the base-2 log-sum-exp) per q block.

One program (triton) or one row of grid steps (mosaic) per (batch, head, q block) visits the
non-empty k blocks of its row of the tile table. Softmax (FlashAttention-2): a float32 running
max ``m`` and sum ``l`` and an unnormalised accumulator, rescaled by ``exp2(m_old - m_new)``
per tile and divided by ``l`` once at the end; the saved ``lse = m + log2(l)`` (base 2) lets
the backward recompute probabilities. A row with no visible key returns zeros (lse 0).
Sigmoid (FlashSigmoid): a plain sum of ``sigmoid(s + b) v`` over tiles, no statistics.

``debug_counts`` adds a per-q-block count of the FULL and PARTIAL tiles actually processed.

``run`` builds the operands on the XLA side and launches the kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from attnlab.kernels.flash import operands
from attnlab.kernels.flash import mosaic_tpu
from attnlab.kernels.flash import tile_math
from attnlab.kernels.flash import triton
from attnlab.kernels.flash.config import F32, FULL_DIM, LANES, Config, Operand


def _store_counts(ref, nf, np_):
  lane = lax.broadcasted_iota(jnp.int32, (1, LANES), 1)
  ref[...] = jnp.where(lane == 0, nf, jnp.where(lane == 1, np_, 0)).astype(jnp.int32)


def fwd_kernel(cfg: Config, names, ops, n_pref, *refs):
  kind = "fwd"
  pref, R = operands.split_refs(names, ops, n_pref, refs)
  c = operands.program_coords(cfg, kind, pref)
  tile = tile_math.Tile(cfg, kind, R, c, head=c.h)
  bq, _ = cfg.blocks(kind)
  softmax = cfg.normalizer == "softmax"
  n_first, n_tot = operands.row_counts(cfg, kind, R, pref, c.b, c.i)
  v_dtype = R["v"].dtype

  def step(j, carry, masked, q):
    m, l, acc, nf, npar = carry
    k, v = tile.load("k", i=c.i, j=j), tile.load("v", i=c.i, j=j)
    s, _ = tile.scores(q, k, c.i, j, masked=masked)
    if softmax:
      m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
      m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
      p = jnp.exp2(s - m_safe)
      alpha = jnp.exp2(m - m_safe)
      l = alpha * l + jnp.sum(p, axis=1, keepdims=True)
      acc = alpha * acc + tile_math.dot_nn(p.astype(v_dtype), v, cfg.precision)
      m = m_new
    else:
      p = tile_math.sigmoid(cfg, s + cfg.sigmoid_bias)
      acc = acc + tile_math.dot_nn(p.astype(v_dtype), v, cfg.precision)
    if masked:
      npar = npar + 1
    else:
      nf = nf + 1
    return m, l, acc, nf, npar

  def finish(m, l, acc, nf, npar):
    if softmax:
      empty = l == 0.0
      out = acc / jnp.where(empty, 1.0, l)
      R["lse"][...] = jnp.where(empty, 0.0, m + jnp.log2(jnp.where(empty, 1.0, l)))
    else:
      out = acc
    R["o"][...] = out.astype(R["o"].dtype)
    if cfg.debug_counts:
      _store_counts(R["counts"], nf, npar)

  init = (jnp.full((bq, 1), -jnp.inf, F32), jnp.zeros((bq, 1), F32),
          jnp.zeros((bq, cfg.v_dim), F32), jnp.int32(0), jnp.int32(0))

  if cfg.backend == "triton":
    q = R["q"][...]
    jt = triton.tile_index_fn(cfg, kind, R, c.b, c.i)
    finish(*triton.two_loops(cfg, kind, n_first, n_tot,
                             lambda t, cr, m: step(jt(t), cr, m, q), init))
    return

  # mosaic: one tile per grid step, state in scratch.
  m_ref, l_ref, acc_ref, cnt_ref = R["m_scr"], R["l_scr"], R["acc_scr"], R["cnt_scr"]
  t = c.t

  @pl.when(t == 0)
  def _():
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, F32)
    l_ref[...] = jnp.zeros(l_ref.shape, F32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, F32)
    cnt_ref[0] = 0
    cnt_ref[1] = 0

  def run_step(masked):
    carry = (m_ref[:, :1], l_ref[:, :1], acc_ref[...], cnt_ref[0], cnt_ref[1])
    m, l, acc, nf, npar = step(c.j, carry, masked, R["q"][...])
    m_ref[...] = jnp.broadcast_to(m, m_ref.shape)
    l_ref[...] = jnp.broadcast_to(l, l_ref.shape)
    acc_ref[...] = acc
    cnt_ref[0] = nf
    cnt_ref[1] = npar

  mosaic_tpu.two_whens(cfg, kind, t, n_first, n_tot, run_step)

  @pl.when(t == cfg.steps(kind) - 1)
  def _():
    finish(m_ref[:, :1], l_ref[:, :1], acc_ref[...], cnt_ref[0], cnt_ref[1])


def run(cfg: Config, q, k, v, bias, slopes, scalars, qvecs, kvecs, tables, mods=()):
  """The forward on padded, driver-laid-out inputs -> ``(out, lse | None, counts | None)``."""
  q_roles, _ = operands.roles(cfg)
  out_shape = (q.shape[:-1] + (cfg.v_dim,))
  outs = [(Operand("o", q_roles), jax.ShapeDtypeStruct(out_shape, q.dtype))]
  if cfg.normalizer == "softmax":
    outs.append((Operand("lse", operands.STATS_ROLES),
                 jax.ShapeDtypeStruct(operands.stats_shape(cfg), jnp.float32)))
  if cfg.debug_counts:
    nq = cfg.n_rows("fwd")
    outs.append((Operand("counts", ("b", "h", "qblk", FULL_DIM, FULL_DIM)),
                 jax.ShapeDtypeStruct((cfg.batch, cfg.heads, nq, 1, LANES), jnp.int32)))
  ins = operands.common_inputs(cfg, q, k, v, bias, slopes, scalars, qvecs, kvecs, mods)
  res = operands.call(cfg, "fwd", fwd_kernel, ins, outs, tables,
                    cost=operands.cost(cfg, "fwd", q.dtype.itemsize))
  return res["o"], res.get("lse"), res.get("counts")
