"""Kernel operands: roles -> BlockSpecs and in-kernel slices, program coordinates, the
``pallas_call`` assembly, and the XLA-side inputs shared by the three kernels.

An operand's axes are described by roles (see ``config.Operand``). ``block_spec`` turns the
roles into a block shape and an ``index_map`` for the kernel kind and driver, ``selector``
into the matching in-kernel indexer of one tile:

* q / k roles are blocked by the kind's tile sizes (one q block for "fwd"/"dq", one k block
  for "dkv"); on the triton driver the *other* sequence axis is passed whole and sliced
  in-kernel with ``pl.ds`` (mosaic fetches the visited tile through the ``index_map`` instead);
* "h" on the triton dk/dv kernel is the whole group of query heads of the program's kv head.

Driver-specific parts (grid, coordinates, table inputs, the launch itself) live in
``attnlab.kernels.flash.triton`` and ``attnlab.kernels.flash.mosaic_tpu``; ``driver(cfg)`` picks
one. The XLA-side operand lists of the three kernels start from ``common_inputs`` (q, k, v,
scalars, bias, ALiBi slopes, mask vectors), laid out by ``roles``.
"""

from __future__ import annotations

from jax.experimental import pallas as pl

from attnlab.kernels.flash import mosaic_tpu
from attnlab.kernels.flash import triton
from attnlab.kernels.flash.config import FULL_DIM, Config, Coords, Operand


def driver(cfg: Config):
  """The driver module of ``cfg.backend``."""
  return mosaic_tpu if cfg.backend == "mosaic" else triton


def grid(cfg: Config, kind: str) -> tuple[int, ...]:
  return driver(cfg).grid(cfg, kind)


def coords(cfg: Config, kind: str, idx, pref=None) -> Coords:
  """Grid indices (+ scalar-prefetch refs on mosaic) -> block coordinates."""
  return driver(cfg).coords(cfg, kind, idx, pref)


# ------------------------------------------------------------------------------------------
# Roles -> block specs and in-kernel slices.


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
    return driver(cfg).scalar_spec(shape)
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
# Inside a kernel. Every kernel body receives its refs as a dict (plus "__ops__": the
# Operand table) and the scalar-prefetch refs (empty on triton).


def split_refs(names, ops, n_pref, refs):
  pref = refs[:n_pref]
  d = dict(zip(names, refs[n_pref:]))
  d["__ops__"] = ops
  return pref, d


def program_coords(cfg: Config, kind: str, pref) -> Coords:
  idx = tuple(pl.program_id(a) for a in range(len(grid(cfg, kind))))
  return coords(cfg, kind, idx, pref)


def row_counts(cfg: Config, kind: str, refs: dict, pref, b, r):
  """(tiles in the first group, non-empty tiles) of row ``r`` of the tile table."""
  return driver(cfg).row_counts(cfg, kind, refs, pref, b, r)


# ------------------------------------------------------------------------------------------
# pallas_call assembly.


def call(cfg: Config, kind: str, body, inputs, outputs, tables, *, cost=None):
  """Run kernel body ``body`` as kernel ``kind`` ("fwd" | "dq" | "dkv").

  inputs: list of (Operand, array); outputs: list of (Operand, ShapeDtypeStruct);
  tables: (table, n_first, n_tot) flat int32 arrays. Returns the outputs as a dict.
  """
  drv = driver(cfg)
  in_ops = list(inputs) + drv.table_inputs(tables)
  in_specs = [block_spec(cfg, kind, op, x.shape) for op, x in in_ops]
  out_specs = [block_spec(cfg, kind, op, s.shape) for op, s in outputs]
  names = [op.name for op, _ in in_ops] + [op.name for op, _ in outputs]
  ops = {op.name: op for op, _ in list(in_ops) + list(outputs)}
  out_shape = [s for _, s in outputs]
  res = drv.pallas_call(cfg, kind, body, names, ops, [x for _, x in in_ops], tables, in_specs,
                        out_specs, out_shape, cost)
  return {op.name: r for (op, _), r in zip(outputs, res)}


# ------------------------------------------------------------------------------------------
# Operands on the XLA side.


def roles(cfg: Config):
  """(q roles, k/v roles) of the driver's layout."""
  if cfg.backend == "mosaic":  # [B, heads, T, D]
    return ("b", "h", "q", FULL_DIM), ("b", "kh", "k", FULL_DIM)
  return ("b", "q", "h", FULL_DIM), ("b", "k", "kh", FULL_DIM)  # [B, T, heads, D]


def bias_roles(shape):
  b, h, tq, tk = shape
  return ("b" if b > 1 else "1", "h" if h > 1 else "1", "q" if tq > 1 else FULL_DIM,
          "k" if tk > 1 else FULL_DIM)


def common_inputs(cfg: Config, q, k, v, bias, slopes, scalars, qvecs, kvecs, mods=()):
  """The inputs every kernel reads, as (Operand, array). ``mods``: the score_mod's captured
  arrays (at least 1-d), each read whole."""
  q_roles, kv_roles = roles(cfg)
  ins = [(Operand("q", q_roles), q), (Operand("k", kv_roles), k),
         (Operand("v", kv_roles), v),
         (Operand("scalars", ("n", "n"), scalar=True), scalars)]
  if bias is not None:
    ins.append((Operand("bias", bias_roles(bias.shape)), bias))
  if slopes is not None:
    ins.append((Operand("slopes", ("n", "n"), scalar=True), slopes))
  for n, x in enumerate(qvecs):
    ins.append((Operand(f"qv{n}", ("b", "q", FULL_DIM)), x))
  for n, x in enumerate(kvecs):
    ins.append((Operand(f"kv{n}", ("b", FULL_DIM, "k")), x))
  for n, x in enumerate(mods):
    ins.append((Operand(f"mod{n}", (FULL_DIM,) * x.ndim), x))
  return ins


STATS_ROLES = ("b", "h", "q", FULL_DIM)  # per-query-row float32 statistics (lse, delta)


def stats_shape(cfg: Config):
  return (cfg.batch, cfg.heads, cfg.q_pad, 1)


def cost(cfg: Config, kind: str, itemsize: int):
  """Rough CostEstimate for XLA's scheduler (visited tiles only)."""
  pairs = cfg.batch * cfg.heads * cfg.q_pad * cfg.kv_pad * cfg.visited_fraction
  mm = {"fwd": 2, "dq": 3, "dkv": 4}[kind]
  d = cfg.head_dim
  io = (cfg.batch * (cfg.heads * cfg.q_pad + 2 * cfg.kv_heads * cfg.kv_pad) * d * itemsize)
  return pl.CostEstimate(flops=int(2 * mm * pairs * d), transcendentals=int(pairs),
                         bytes_accessed=int(io * (1 if kind == "fwd" else 2)))
