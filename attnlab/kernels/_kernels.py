"""The three Pallas kernels (forward, dq, dk/dv) and their two drivers.

Algorithms: FlashAttention-2 (Dao, arXiv 2307.08691) for softmax -- online float32 max/sum in
the forward, log-sum-exp saved, probabilities recomputed in a dq kernel (parallel over q
blocks) and a dk/dv kernel (parallel over k blocks); FlashSigmoid (Ramapuram et al., arXiv
2409.04431) for sigmoid -- the same tiling without row statistics. Departures and extras are
listed in ``attnlab.kernels.flash``.

The per-tile math (logits, online softmax, sigmoid, tile gradients) is written once; only how
tiles are visited differs between the two drivers:

* ``"triton"`` (GPU, and the default in CPU interpret mode): grid ``(n_row_blocks, B, heads)``;
  each program loops (``lax.fori_loop`` with a dynamic trip count) over the non-empty tiles of
  its row of the tile table, reading K/V (or Q/dO) slices from whole-sequence refs with
  ``pl.ds``. FULL tiles come first in the table and run without the elementwise mask, then the
  PARTIAL ones with it. Table and counts are ordinary (whole-array) int32 inputs read with scalar
  loads; the Triton backend has no scalar prefetch and no scratch memory.
* ``"mosaic"`` (TPU): grid ``(B, heads, n_row_blocks, steps)``; the tile table is scalar-prefetched
  (``pltpu.PrefetchScalarGridSpec``) and drives the K/V ``index_map``; steps past a row's count
  repeat the last tile index (so no new DMA is issued) and are skipped with ``pl.when``;
  accumulators live in VMEM scratch. Layout is ``[B, heads, T, D]``.

Operands describe their axes with *roles* ("b", "h", "kh", "q", "k", "qblk" or a full dim) and one
function turns roles into BlockSpecs, index maps and in-kernel slices for both drivers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from attnlab.kernels import kmask

F32 = jnp.float32
LOG2E = math.log2(math.e)
LANES = 128  # TPU lane width: statistics scratch and debug counters are lane-replicated
FULL_DIM = "full"


@dataclasses.dataclass(frozen=True)
class Config:
  """Static description of one attention call (hashable: custom_vjp nondiff argument)."""
  normalizer: str  # "softmax" | "sigmoid"
  scale: float
  softcap: float | None
  sigmoid_bias: float
  batch: int
  heads: int
  kv_heads: int
  head_dim: int
  v_dim: int
  q_len: int
  kv_len: int
  q_pad: int
  kv_pad: int
  block_q: int
  block_k: int
  block_q_bwd: int
  block_k_bwd: int
  fwd_steps: int
  dq_steps: int
  dkv_steps: int
  fwd_table_batched: bool
  bwd_table_batched: bool
  # Per kernel ("fwd", "dq", "dkv"): whether each table row lists its PARTIAL tiles before
  # its FULL ones, and whether every row is a contiguous ascending run (then the triton
  # driver computes the tile index as start + t instead of loading it every step).
  partial_first: tuple[bool, bool, bool]
  contiguous: tuple[bool, bool, bool]
  bias_shape: tuple[int, int, int, int] | None  # broadcast shape of the additive bias
  has_alibi: bool
  mask_program: tuple | None
  n_q_vecs: int
  n_k_vecs: int
  backend: str  # "triton" | "mosaic"
  interpret: Any  # False | True | pltpu.InterpretParams
  num_warps: int | None
  num_stages: int | None
  num_warps_bwd: int | None
  num_stages_bwd: int | None
  fast_math: bool  # GPU: tanh.approx for sigmoid / soft-capping
  precision: Any  # dot precision (HIGHEST for float32 inputs)
  debug_counts: bool = False
  visited_fraction: float = 1.0  # share of non-empty tiles (cost estimates)

  @property
  def groups(self) -> int:
    return self.heads // self.kv_heads

  @property
  def ragged_k(self) -> bool:
    return self.kv_len % self.block_k != 0 or self.kv_len % self.block_k_bwd != 0

  def blocks(self, kind: str) -> tuple[int, int]:
    return (self.block_q, self.block_k) if kind == "fwd" else (self.block_q_bwd,
                                                               self.block_k_bwd)

  def steps(self, kind: str) -> int:
    return {"fwd": self.fwd_steps, "dq": self.dq_steps, "dkv": self.dkv_steps}[kind]

  def first_masked(self, kind: str) -> bool:
    return self.partial_first[("fwd", "dq", "dkv").index(kind)]

  def is_contiguous(self, kind: str) -> bool:
    return self.contiguous[("fwd", "dq", "dkv").index(kind)]

  def table_batched(self, kind: str) -> bool:
    return self.fwd_table_batched if kind == "fwd" else self.bwd_table_batched

  def n_rows(self, kind: str) -> int:
    """Blocks along the axis the grid walks (q for fwd/dq, k for dkv)."""
    bq, bk = self.blocks(kind)
    return self.kv_pad // bk if kind == "dkv" else self.q_pad // bq

  @property
  def bias_q_full(self) -> bool:
    return self.bias_shape is not None and self.bias_shape[2] > 1

  @property
  def bias_k_full(self) -> bool:
    return self.bias_shape is not None and self.bias_shape[3] > 1


@dataclasses.dataclass(frozen=True)
class Operand:
  name: str
  roles: tuple[str, ...]
  scalar: bool = False  # small table read with scalar indexing (TPU: whole array in SMEM)


# ------------------------------------------------------------------------------------------
# Grid, coordinates and block specs.


def grid(cfg: Config, kind: str) -> tuple[int, ...]:
  rows = cfg.n_rows(kind)
  if kind == "dkv":
    if cfg.backend == "triton":
      return (rows, cfg.batch, cfg.kv_heads)
    return (cfg.batch, cfg.kv_heads, rows, cfg.groups * cfg.steps(kind))
  if cfg.backend == "triton":
    return (rows, cfg.batch, cfg.heads)
  return (cfg.batch, cfg.heads, rows, cfg.steps(kind))


def _table_index(cfg: Config, kind: str, b, r, t=None):
  bb = b if cfg.table_batched(kind) else 0
  row = bb * cfg.n_rows(kind) + r
  return row if t is None else row * cfg.steps(kind) + t


@dataclasses.dataclass
class Coords:
  b: Any
  h: Any = None
  kh: Any = None
  i: Any = None  # q block
  j: Any = None  # k block
  g: Any = None  # head within the group (dkv)
  t: Any = None  # step (mosaic)


def coords(cfg: Config, kind: str, idx, pref=None) -> Coords:
  """Grid indices (+ scalar-prefetch refs on mosaic) -> block coordinates."""
  g_ = cfg.groups
  if kind == "dkv":
    if cfg.backend == "triton":
      j, b, kh = idx
      return Coords(b=b, kh=kh, j=j)
    b, kh, j, s = idx
    steps = cfg.steps(kind)
    # lax.div / lax.rem (truncating; indices are >= 0): jnp's floor division emits sign ops.
    g, t = lax.div(s, steps), lax.rem(s, steps)
    i = pref[0][_table_index(cfg, kind, b, j, t)]
    return Coords(b=b, kh=kh, h=kh * g_ + g, g=g, i=i, j=j, t=t)
  if cfg.backend == "triton":
    p0, b, h = idx
    # Heaviest rows first (for causal masks the last q blocks see the most keys).
    return Coords(b=b, h=h, kh=lax.div(h, g_), i=cfg.n_rows(kind) - 1 - p0)
  b, h, i, t = idx
  j = pref[0][_table_index(cfg, kind, b, i, t)]
  return Coords(b=b, h=h, kh=lax.div(h, g_), i=i, j=j, t=t)


def _dim_plan(cfg: Config, kind: str, role: str, size: int):
  """(block dim, index fn(Coords), dynamic) for one axis of an operand."""
  bq, bk = cfg.blocks(kind)
  tri = cfg.backend == "triton"
  if role == "b":
    return None, lambda c: c.b, False
  if role == "kh":
    return None, lambda c: c.kh, False
  if role == "qblk":
    return None, lambda c: c.i, False
  if role == "1":  # broadcast (size-1) leading dim, squeezed
    return None, lambda c: 0, False
  if role == "h":
    if kind == "dkv" and tri:
      return cfg.groups, lambda c: c.kh, True
    return None, lambda c: c.h, False
  if role == "q":
    if kind == "dkv" and tri:
      return size, lambda c: 0, True
    return bq, lambda c: c.i, False
  if role == "k":
    if kind != "dkv" and tri:
      return size, lambda c: 0, True
    return bk, lambda c: c.j, False
  return size, lambda c: 0, False  # full dim


def block_spec(cfg: Config, kind: str, op: Operand, shape: tuple[int, ...]) -> pl.BlockSpec:
  if op.scalar:
    if cfg.backend == "mosaic":
      from jax.experimental.pallas import tpu as pltpu
      return pl.BlockSpec(memory_space=pltpu.SMEM)
    nd = len(shape)
    return pl.BlockSpec(shape, lambda *_: (0,) * nd)
  plans = [_dim_plan(cfg, kind, r, s) for r, s in zip(op.roles, shape)]
  block = tuple(p[0] for p in plans)
  fns = [p[1] for p in plans]
  n_grid = len(grid(cfg, kind))

  def index_map(*args):
    c = coords(cfg, kind, args[:n_grid], args[n_grid:])
    return tuple(f(c) for f in fns)

  return pl.BlockSpec(block, index_map)


def selector(cfg: Config, kind: str, op: Operand, *, i=None, j=None, g=None):
  """In-kernel indexer of one tile of ``op`` (dynamic slices for whole-sequence refs)."""
  bq, bk = cfg.blocks(kind)
  tri = cfg.backend == "triton"
  idx = []
  for r in op.roles:
    if r in ("b", "kh", "qblk", "1"):
      continue
    if r == "h":
      if kind == "dkv" and tri:
        idx.append(g)
      continue
    if r == "q" and kind == "dkv" and tri:
      idx.append(pl.ds(pl.multiple_of(i * bq, bq), bq))
    elif r == "k" and kind != "dkv" and tri:
      idx.append(pl.ds(pl.multiple_of(j * bk, bk), bk))
    else:
      idx.append(slice(None))
  return tuple(idx)


# ------------------------------------------------------------------------------------------
# Per-tile math shared by all kernels and drivers.


def _dot_nt(a, b, precision):
  """a [m, d] . b [n, d]^T -> [m, n] float32."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=F32,
                         precision=precision)


def _dot_nn(a, b, precision):
  return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=F32,
                         precision=precision)


def _dot_tn(a, b, precision):
  """a [m, n]^T . b [m, d] -> [n, d] float32."""
  return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=F32,
                         precision=precision)


def _tanh(cfg: Config, x):
  if cfg.fast_math:
    from jax.experimental.pallas import triton as plgpu
    return plgpu.approx_tanh(x)
  return jnp.tanh(x)


def _sigmoid(cfg: Config, x):
  if cfg.fast_math:  # one MUFU op instead of exp + reciprocal
    return 0.5 + 0.5 * _tanh(cfg, 0.5 * x)
  return 1.0 / (1.0 + jnp.exp(-x))


class Tile:
  """Loaded context of one program: how to fetch extras for a tile (i, j)."""

  def __init__(self, cfg: Config, kind: str, refs: dict, c: Coords, head):
    self.cfg, self.kind, self.refs, self.c, self.head = cfg, kind, refs, c, head
    self.ops = refs["__ops__"]

  def load(self, name, i=None, j=None, g=None):
    ref = self.refs[name]
    return ref[selector(self.cfg, self.kind, self.ops[name], i=i, j=j, g=g)]

  def has(self, name):
    return name in self.refs

  def scalar(self, s):
    return self.refs["scalars"][self.c.b, s]

  def scores(self, q, k, i, j, *, masked: bool, g=None):
    """Logits of tile (i, j) in the normaliser's domain (base 2 for softmax), masked to -inf
    where not allowed, and ``tanh`` of the capped logits (or None)."""
    cfg = self.cfg
    bq, bk = cfg.blocks(self.kind)
    s = _dot_nt(q, k, cfg.precision)
    c2 = LOG2E if cfg.normalizer == "softmax" else 1.0
    extras = self.has("bias") or cfg.has_alibi
    t = None
    if cfg.softcap is not None:
      t = _tanh(cfg, s * (cfg.scale / cfg.softcap))
      s = t * (cfg.softcap * (1.0 if extras else c2))
    else:
      s = s * (cfg.scale * (1.0 if extras else c2))
    need_pos = masked or cfg.has_alibi
    if need_pos:
      q_pos = i * bq + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
      k_pos = j * bk + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    if extras:
      if self.has("bias"):
        s = s + self.load("bias", i=i, j=j, g=g).astype(F32)
      if cfg.has_alibi:
        slope = self.refs["slopes"][self.c.b, self.head]
        dist = jnp.abs(q_pos + self.scalar(0) - k_pos).astype(F32)
        s = s - slope * dist
      if c2 != 1.0:
        s = s * c2
    if masked:
      ok = None
      if cfg.mask_program is not None:
        ctx = kmask.TileContext(
            q_pos=q_pos, k_pos=k_pos, scalar=lambda n: self.scalar(1 + n),
            q_vec=lambda n: self.load(f"qv{n}", i=i, j=j, g=g),
            k_vec=lambda n: self.load(f"kv{n}", i=i, j=j, g=g))
        ok = kmask.evaluate(cfg.mask_program, ctx)
      if cfg.ragged_k:
        in_range = k_pos < cfg.kv_len
        ok = in_range if ok is None else ok & in_range
      if ok is not None:
        s = jnp.where(ok, s, -jnp.inf)
    return s, t

  def probs_and_grads(self, s, t, do, v, lse=None, delta=None):
    """Recomputed probabilities and d logits (``ds`` w.r.t. the biased logits, ``ds_raw``
    w.r.t. ``q.k * scale`` before soft-capping)."""
    cfg = self.cfg
    dp = _dot_nt(do, v, cfg.precision)
    if cfg.normalizer == "softmax":
      p = jnp.exp2(s - lse)
      ds = p * (dp - delta)
    else:
      p = _sigmoid(cfg, s + cfg.sigmoid_bias)
      ds = dp * (p * (1.0 - p))
    ds_raw = ds if t is None else ds * (1.0 - t * t)
    return p, ds, ds_raw


# ------------------------------------------------------------------------------------------
# Kernels. Every kernel body receives refs as a dict (plus "__ops__": the Operand table).


def _split_refs(names, ops, n_pref, refs):
  pref = refs[:n_pref]
  d = dict(zip(names, refs[n_pref:]))
  d["__ops__"] = ops
  return pref, d


def _program_coords(cfg, kind, pref):
  idx = tuple(pl.program_id(a) for a in range(len(grid(cfg, kind))))
  return coords(cfg, kind, idx, pref)


def _counts(cfg, kind, refs, pref, b, r):
  n = _table_index(cfg, kind, b, r)
  if cfg.backend == "mosaic":
    return pref[1][n], pref[2][n]
  return refs["nfirst"][n], refs["ntot"][n]


def _tile_index_fn(cfg, kind, refs, b, r):
  """t -> index of the t-th tile of row r (triton driver)."""
  if cfg.is_contiguous(kind):
    start = refs["table"][_table_index(cfg, kind, b, r, 0)]
    return lambda t: start + t
  return lambda t: refs["table"][_table_index(cfg, kind, b, r, t)]


def _two_loops(cfg, kind, n_first, n_tot, body, init):
  """Triton driver: the first group of tiles, then the second (one is FULL, one PARTIAL)."""
  m1 = cfg.first_masked(kind)
  carry = lax.fori_loop(0, n_first, lambda t, c: body(t, c, m1), init)
  return lax.fori_loop(n_first, n_tot, lambda t, c: body(t, c, not m1), carry)


def _two_whens(cfg, kind, t, n_first, n_tot, run):
  """Mosaic driver: grid step t runs the tile with or without the mask, or nothing."""
  m1 = cfg.first_masked(kind)
  pl.when(t < n_first)(lambda: run(m1))
  pl.when((t >= n_first) & (t < n_tot))(lambda: run(not m1))


def _store_counts(ref, nf, np_):
  lane = lax.broadcasted_iota(jnp.int32, (1, LANES), 1)
  ref[...] = jnp.where(lane == 0, nf, jnp.where(lane == 1, np_, 0)).astype(jnp.int32)


def fwd_kernel(cfg: Config, names, ops, n_pref, *refs):
  kind = "fwd"
  pref, R = _split_refs(names, ops, n_pref, refs)
  c = _program_coords(cfg, kind, pref)
  tile = Tile(cfg, kind, R, c, head=c.h)
  bq, _ = cfg.blocks(kind)
  softmax = cfg.normalizer == "softmax"
  n_first, n_tot = _counts(cfg, kind, R, pref, c.b, c.i)
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
      acc = alpha * acc + _dot_nn(p.astype(v_dtype), v, cfg.precision)
      m = m_new
    else:
      p = _sigmoid(cfg, s + cfg.sigmoid_bias)
      acc = acc + _dot_nn(p.astype(v_dtype), v, cfg.precision)
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
    jt = _tile_index_fn(cfg, kind, R, c.b, c.i)
    finish(*_two_loops(cfg, kind, n_first, n_tot, lambda t, cr, m: step(jt(t), cr, m, q), init))
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

  def run(masked):
    carry = (m_ref[:, :1], l_ref[:, :1], acc_ref[...], cnt_ref[0], cnt_ref[1])
    m, l, acc, nf, npar = step(c.j, carry, masked, R["q"][...])
    m_ref[...] = jnp.broadcast_to(m, m_ref.shape)
    l_ref[...] = jnp.broadcast_to(l, l_ref.shape)
    acc_ref[...] = acc
    cnt_ref[0] = nf
    cnt_ref[1] = npar

  _two_whens(cfg, kind, t, n_first, n_tot, run)

  @pl.when(t == cfg.steps(kind) - 1)
  def _():
    finish(m_ref[:, :1], l_ref[:, :1], acc_ref[...], cnt_ref[0], cnt_ref[1])


def dq_kernel(cfg: Config, names, ops, n_pref, *refs):
  kind = "dq"
  pref, R = _split_refs(names, ops, n_pref, refs)
  c = _program_coords(cfg, kind, pref)
  tile = Tile(cfg, kind, R, c, head=c.h)
  bq, bk = cfg.blocks(kind)
  softmax = cfg.normalizer == "softmax"
  n_first, n_tot = _counts(cfg, kind, R, pref, c.b, c.i)
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
    s, t = tile.scores(q, k, c.i, j, masked=masked)
    _, ds, ds_raw = tile.probs_and_grads(s, t, do, v, lse, delta)
    if ds_tiles:
      R["ds"][selector(cfg, kind, ops["ds"], i=c.i, j=j)] = ds
    if ds_rows:
      rows = rows + jnp.sum(ds, axis=1, keepdims=True)
    dq = dq + _dot_nn(ds_raw.astype(k_dtype), k, cfg.precision)
    return dq, rows

  def finish(dq, rows):
    R["dq"][...] = (dq * cfg.scale).astype(R["dq"].dtype)
    if ds_rows:
      R["dbias_rows"][...] = rows

  init = (jnp.zeros((bq, cfg.head_dim), F32), jnp.zeros((bq, 1), F32))
  if cfg.backend == "triton":
    rows_in = load_rows()
    jt = _tile_index_fn(cfg, kind, R, c.b, c.i)
    finish(*_two_loops(cfg, kind, n_first, n_tot,
                       lambda t, cr, m: step(jt(t), cr, m, rows_in), init))
    return

  dq_ref, rows_ref = R["dq_scr"], R["rows_scr"]
  t = c.t

  @pl.when(t == 0)
  def _():
    dq_ref[...] = jnp.zeros(dq_ref.shape, F32)
    rows_ref[...] = jnp.zeros(rows_ref.shape, F32)

  def run(masked):
    dq, rows = step(c.j, (dq_ref[...], rows_ref[:, :1]), masked, load_rows())
    dq_ref[...] = dq
    rows_ref[...] = jnp.broadcast_to(rows, rows_ref.shape)

  _two_whens(cfg, kind, t, n_first, n_tot, run)

  @pl.when(t == cfg.steps(kind) - 1)
  def _():
    finish(dq_ref[...], rows_ref[:, :1])


def dkv_kernel(cfg: Config, names, ops, n_pref, *refs):
  kind = "dkv"
  pref, R = _split_refs(names, ops, n_pref, refs)
  c = _program_coords(cfg, kind, pref)
  bq, bk = cfg.blocks(kind)
  softmax = cfg.normalizer == "softmax"
  n_first, n_tot = _counts(cfg, kind, R, pref, c.b, c.j)
  q_dtype, do_dtype = R["q"].dtype, R["do"].dtype
  cols_out = "dbias_cols" in R  # bias broadcast along q: column sums per head

  def step(tile, i, g, carry, masked):
    dk, dv, cols = carry
    q, do = tile.load("q", i=i, g=g), tile.load("do", i=i, g=g)
    lse = tile.load("lse", i=i, g=g) if softmax else None
    delta = tile.load("delta", i=i, g=g) if softmax else None
    k, v = R["k"][...], R["v"][...]
    s, t = tile.scores(q, k, i, c.j, masked=masked, g=g)
    p, ds, ds_raw = tile.probs_and_grads(s, t, do, v, lse, delta)
    dv = dv + _dot_tn(p.astype(do_dtype), do, cfg.precision)
    dk = dk + _dot_tn(ds_raw.astype(q_dtype), q, cfg.precision)
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
      tile = Tile(cfg, kind, R, c, head=c.kh * cfg.groups + g)
      it = _tile_index_fn(cfg, kind, R, c.b, c.j)
      cr = (dk, dv, jnp.zeros((1, bk), F32))
      cr = _two_loops(cfg, kind, n_first, n_tot, lambda t, x, m: step(tile, it(t), g, x, m), cr)
      if cols_out:
        R["dbias_cols"][selector(cfg, kind, ops["dbias_cols"], g=g)] = cr[2]
      return cr[0], cr[1]

    dk, dv = lax.fori_loop(0, cfg.groups, group_member, zeros_kv)
    finish(dk, dv)
    return

  tile = Tile(cfg, kind, R, c, head=c.h)
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

  def run(masked):
    dk, dv, cols = step(tile, c.i, c.g, (dk_ref[...], dv_ref[...], cols_ref[...]), masked)
    dk_ref[...] = dk
    dv_ref[...] = dv
    cols_ref[...] = cols

  _two_whens(cfg, kind, t, n_first, n_tot, run)

  if cols_out:
    @pl.when(t == steps - 1)
    def _():
      R["dbias_cols"][...] = cols_ref[...]

  @pl.when(s_idx == cfg.groups * steps - 1)
  def _():
    finish(dk_ref[...], dv_ref[...])


# ------------------------------------------------------------------------------------------
# pallas_call assembly.


def _scratch(cfg: Config, kind: str):
  from jax.experimental.pallas import tpu as pltpu
  bq, bk = cfg.blocks(kind)
  if kind == "fwd":
    return [("m_scr", pltpu.VMEM((bq, LANES), F32)), ("l_scr", pltpu.VMEM((bq, LANES), F32)),
            ("acc_scr", pltpu.VMEM((bq, cfg.v_dim), F32)),
            ("cnt_scr", pltpu.SMEM((2,), jnp.int32))]
  if kind == "dq":
    return [("dq_scr", pltpu.VMEM((bq, cfg.head_dim), F32)),
            ("rows_scr", pltpu.VMEM((bq, LANES), F32))]
  return [("dk_scr", pltpu.VMEM((bk, cfg.head_dim), F32)),
          ("dv_scr", pltpu.VMEM((bk, cfg.v_dim), F32)),
          ("cols_scr", pltpu.VMEM((1, bk), F32))]


def _compiler_params(cfg: Config, kind: str):
  if cfg.backend == "mosaic":
    from jax.experimental.pallas import tpu as pltpu
    sem = ("parallel", "parallel", "parallel", "arbitrary")
    return pltpu.CompilerParams(dimension_semantics=sem)
  from jax.experimental.pallas import triton as plgpu
  if kind == "fwd":
    return plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
  return plgpu.CompilerParams(num_warps=cfg.num_warps_bwd, num_stages=cfg.num_stages_bwd)


_KERNELS = {"fwd": fwd_kernel, "dq": dq_kernel, "dkv": dkv_kernel}


def call(cfg: Config, kind: str, inputs, outputs, tables, *, cost=None):
  """Run kernel ``kind`` ("fwd" | "dq" | "dkv").

  inputs: list of (Operand, array); outputs: list of (Operand, ShapeDtypeStruct);
  tables: (table, n_first, n_tot) flat int32 arrays. Returns the outputs as a dict.
  """
  table, nfirst, ntot = tables
  mosaic = cfg.backend == "mosaic"
  in_ops = list(inputs)
  if not mosaic:
    in_ops += [(Operand("table", ("n",), scalar=True), table),
               (Operand("nfirst", ("n",), scalar=True), nfirst),
               (Operand("ntot", ("n",), scalar=True), ntot)]
  in_specs = [block_spec(cfg, kind, op, x.shape) for op, x in in_ops]
  out_specs = [block_spec(cfg, kind, op, s.shape) for op, s in outputs]
  names = [op.name for op, _ in in_ops] + [op.name for op, _ in outputs]
  ops = {op.name: op for op, _ in list(in_ops) + list(outputs)}
  out_shape = [s for _, s in outputs]
  n_pref = 3 if mosaic else 0
  kernel = functools.partial(_KERNELS[kind], cfg, tuple(names), ops, n_pref)
  g = grid(cfg, kind)
  if mosaic:
    from jax.experimental.pallas import tpu as pltpu
    scratch = _scratch(cfg, kind)
    names = names + [n for n, _ in scratch]
    kernel = functools.partial(_KERNELS[kind], cfg, tuple(names), ops, n_pref)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3, grid=g, in_specs=in_specs, out_specs=out_specs,
        scratch_shapes=[s for _, s in scratch])
    fn = pl.pallas_call(kernel, out_shape=out_shape, grid_spec=grid_spec,
                        interpret=cfg.interpret, compiler_params=_compiler_params(cfg, kind),
                        cost_estimate=cost, name=f"attnlab_flash_{kind}")
    res = fn(table, nfirst, ntot, *[x for _, x in in_ops])
  else:
    fn = pl.pallas_call(kernel, out_shape=out_shape, grid=g, in_specs=in_specs,
                        out_specs=out_specs, interpret=cfg.interpret,
                        compiler_params=_compiler_params(cfg, kind), cost_estimate=cost,
                        name=f"attnlab_flash_{kind}")
    res = fn(*[x for _, x in in_ops])
  return {op.name: r for (op, _), r in zip(outputs, res)}
