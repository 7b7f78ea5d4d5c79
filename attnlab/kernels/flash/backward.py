"""The backward kernels: dq (parallel over q blocks) and dk/dv (parallel over k blocks).

Both recompute each visited tile's probabilities from the forward's statistics instead of
storing them (FlashAttention-2): softmax ``p = exp2(s - lse)`` and
``ds = p * (dP - delta)`` with ``delta = rowsum(dO * O)``; sigmoid ``p = sigmoid(s + b)`` and
``ds = dP * p * (1 - p)``. Soft-capping multiplies by ``1 - tanh^2`` on the way back to
``q.k * scale`` (``Tile.probs_and_grads``). Splitting dq from dk/dv means no atomics.

* ``dq_kernel``: one row of q blocks per (batch, head), walking the k blocks of the dq table;
  also writes the full-resolution ``dS`` tiles or their row sums when the bias is
  differentiated.
* ``dkv_kernel``: one row of k blocks per (batch, kv head), walking the q blocks of the
  transposed table for each of the ``G`` query heads of the group (GQA: no repeated K/V and no
  per-query-head dk/dv); column sums of ``dS`` for a bias broadcast over queries.

``run`` builds the operands on the XLA side, launches both kernels and reduces the bias
gradient over the bias's broadcast axes.
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
from attnlab.kernels.flash.config import F32, FULL_DIM, Config, Operand


def dq_kernel(cfg: Config, names, ops, n_pref, *refs):
  kind = "dq"
  pref, R = operands.split_refs(names, ops, n_pref, refs)
  c = operands.program_coords(cfg, kind, pref)
  tile = tile_math.Tile(cfg, kind, R, c, head=c.h)
  bq, bk = cfg.blocks(kind)
  softmax = cfg.normalizer == "softmax"
  n_first, n_tot = operands.row_counts(cfg, kind, R, pref, c.b, c.i)
  k_dtype = R["k"].dtype
  ds_tiles = "ds" in R  # full-resolution bias gradient
  ds_rows = "dbias_rows" in R  # bias broadcast along k: row sums

  def load_rows():
    lse = R["lse"][...] if softmax else None
    delta = R["delta"][...] if softmax else None
    return R["q"][...], R["do"][...], lse, delta

  def step(j, carry, masked, rows_in):
    dq, rows = carry
    q, do, lse, delta = rows_in
    k, v = tile.load("k", i=c.i, j=j), tile.load("v", i=c.i, j=j)
    s, t, mod_vjp = tile.scores(q, k, c.i, j, masked=masked, with_vjp=True)
    _, ds, ds_raw = tile.probs_and_grads(s, t, do, v, lse, delta, mod_vjp)
    if ds_tiles:
      R["ds"][operands.selector(cfg, kind, ops["ds"], i=c.i, j=j)] = ds
    if ds_rows:
      rows = rows + jnp.sum(ds, axis=1, keepdims=True)
    dq = dq + tile_math.dot_nn(ds_raw.astype(k_dtype), k, cfg.precision)
    return dq, rows

  def finish(dq, rows):
    R["dq"][...] = (dq * cfg.scale).astype(R["dq"].dtype)
    if ds_rows:
      R["dbias_rows"][...] = rows

  init = (jnp.zeros((bq, cfg.head_dim), F32), jnp.zeros((bq, 1), F32))
  if cfg.backend == "triton":
    rows_in = load_rows()
    jt = triton.tile_index_fn(cfg, kind, R, c.b, c.i)
    finish(*triton.two_loops(cfg, kind, n_first, n_tot,
                             lambda t, cr, m: step(jt(t), cr, m, rows_in), init))
    return

  # mosaic: one tile per grid step, state in scratch.
  dq_ref, rows_ref = R["dq_scr"], R["rows_scr"]
  t = c.t

  @pl.when(t == 0)
  def _():
    dq_ref[...] = jnp.zeros(dq_ref.shape, F32)
    rows_ref[...] = jnp.zeros(rows_ref.shape, F32)

  def run_step(masked):
    dq, rows = step(c.j, (dq_ref[...], rows_ref[:, :1]), masked, load_rows())
    dq_ref[...] = dq
    rows_ref[...] = jnp.broadcast_to(rows, rows_ref.shape)

  mosaic_tpu.two_whens(cfg, kind, t, n_first, n_tot, run_step)

  @pl.when(t == cfg.steps(kind) - 1)
  def _():
    finish(dq_ref[...], rows_ref[:, :1])


def dkv_kernel(cfg: Config, names, ops, n_pref, *refs):
  kind = "dkv"
  pref, R = operands.split_refs(names, ops, n_pref, refs)
  c = operands.program_coords(cfg, kind, pref)
  bq, bk = cfg.blocks(kind)
  softmax = cfg.normalizer == "softmax"
  n_first, n_tot = operands.row_counts(cfg, kind, R, pref, c.b, c.j)
  q_dtype, do_dtype = R["q"].dtype, R["do"].dtype
  cols_out = "dbias_cols" in R  # bias broadcast along q: column sums per head

  def step(tile, i, g, carry, masked):
    dk, dv, cols = carry
    q, do = tile.load("q", i=i, g=g), tile.load("do", i=i, g=g)
    lse = tile.load("lse", i=i, g=g) if softmax else None
    delta = tile.load("delta", i=i, g=g) if softmax else None
    k, v = R["k"][...], R["v"][...]
    s, t, mod_vjp = tile.scores(q, k, i, c.j, masked=masked, g=g, with_vjp=True)
    p, ds, ds_raw = tile.probs_and_grads(s, t, do, v, lse, delta, mod_vjp)
    dv = dv + tile_math.dot_tn(p.astype(do_dtype), do, cfg.precision)
    dk = dk + tile_math.dot_tn(ds_raw.astype(q_dtype), q, cfg.precision)
    if cols_out:
      cols = cols + jnp.sum(ds, axis=0, keepdims=True)
    return dk, dv, cols

  def finish(dk, dv):
    R["dk"][...] = (dk * cfg.scale).astype(R["dk"].dtype)
    R["dv"][...] = dv.astype(R["dv"].dtype)

  zeros_kv = (jnp.zeros((bk, cfg.head_dim), F32), jnp.zeros((bk, cfg.v_dim), F32))
  if cfg.backend == "triton":
    def group_member(g, carry):
      dk, dv = carry
      tile = tile_math.Tile(cfg, kind, R, c, head=c.kh * cfg.groups + g)
      it = triton.tile_index_fn(cfg, kind, R, c.b, c.j)
      cr = (dk, dv, jnp.zeros((1, bk), F32))
      cr = triton.two_loops(cfg, kind, n_first, n_tot,
                            lambda t, x, m: step(tile, it(t), g, x, m), cr)
      if cols_out:
        R["dbias_cols"][operands.selector(cfg, kind, ops["dbias_cols"], g=g)] = cr[2]
      return cr[0], cr[1]

    dk, dv = lax.fori_loop(0, cfg.groups, group_member, zeros_kv)
    finish(dk, dv)
    return

  # mosaic: grid steps walk the group's query heads, then each one's tiles.
  tile = tile_math.Tile(cfg, kind, R, c, head=c.h)
  dk_ref, dv_ref, cols_ref = R["dk_scr"], R["dv_scr"], R["cols_scr"]
  t, steps = c.t, cfg.steps(kind)
  s_idx = c.g * steps + t

  @pl.when(s_idx == 0)
  def _():
    dk_ref[...] = jnp.zeros(dk_ref.shape, F32)
    dv_ref[...] = jnp.zeros(dv_ref.shape, F32)

  @pl.when(t == 0)
  def _():
    cols_ref[...] = jnp.zeros(cols_ref.shape, F32)

  def run_step(masked):
    dk, dv, cols = step(tile, c.i, c.g, (dk_ref[...], dv_ref[...], cols_ref[...]), masked)
    dk_ref[...] = dk
    dv_ref[...] = dv
    cols_ref[...] = cols

  mosaic_tpu.two_whens(cfg, kind, t, n_first, n_tot, run_step)

  if cols_out:
    @pl.when(t == steps - 1)
    def _():
      R["dbias_cols"][...] = cols_ref[...]

  @pl.when(s_idx == cfg.groups * steps - 1)
  def _():
    finish(dk_ref[...], dv_ref[...])


def run(cfg: Config, res, do, need_dbias: bool):
  """Gradients ``(dq, dk, dv, dbias | None)`` from the forward's residuals ``res``."""
  (q, k, v, bias, slopes, scalars, qvecs, kvecs, mods, dq_tables, dkv_tables, out, lse,
   vis_dq) = res
  q_roles, kv_roles = operands.roles(cfg)
  ins = operands.common_inputs(cfg, q, k, v, bias, slopes, scalars, qvecs, kvecs, mods or ())
  ins.append((Operand("do", q_roles), do))
  if cfg.normalizer == "softmax":
    if cfg.backend == "mosaic":
      delta = jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)[..., None]
    else:
      delta = jnp.einsum("bqhd,bqhd->bhq", do.astype(jnp.float32), out.astype(jnp.float32))
      delta = delta[..., None]
    ins += [(Operand("lse", operands.STATS_ROLES), lse),
            (Operand("delta", operands.STATS_ROLES), delta)]

  dq_outs = [(Operand("dq", q_roles), jax.ShapeDtypeStruct(q.shape, q.dtype))]
  dkv_outs = [(Operand("dk", kv_roles), jax.ShapeDtypeStruct(k.shape, k.dtype)),
              (Operand("dv", kv_roles), jax.ShapeDtypeStruct(v.shape, v.dtype))]
  f32 = jnp.float32
  bh = (cfg.batch, cfg.heads)
  if need_dbias:
    if cfg.bias_q_full and cfg.bias_k_full:
      dq_outs.append((Operand("ds", ("b", "h", "q", "k")),
                      jax.ShapeDtypeStruct(bh + (cfg.q_pad, cfg.kv_pad), f32)))
    elif cfg.bias_k_full:
      dkv_outs.append((Operand("dbias_cols", ("b", "h", FULL_DIM, "k")),
                       jax.ShapeDtypeStruct(bh + (1, cfg.kv_pad), f32)))
    else:
      dq_outs.append((Operand("dbias_rows", ("b", "h", "q", FULL_DIM)),
                      jax.ShapeDtypeStruct(bh + (cfg.q_pad, 1), f32)))
  itemsize = q.dtype.itemsize
  r_dq = operands.call(cfg, "dq", dq_kernel, ins, dq_outs, dq_tables,
                     cost=operands.cost(cfg, "dq", itemsize))
  r_dkv = operands.call(cfg, "dkv", dkv_kernel, ins, dkv_outs, dkv_tables,
                      cost=operands.cost(cfg, "dkv", itemsize))
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
