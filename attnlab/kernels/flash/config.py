"""Static description of one flash-attention call, shared by every kernel and both drivers.

* ``Config``: the hashable description of a call (shapes, tile sizes, tile-table layout,
  logit extras, driver and launch parameters). It is the custom_vjp nondiff argument and every
  kernel body closes over it, so everything in it is compiled into the kernels.
* ``Operand``: one kernel input or output. Its axes are described by *roles*: "b" (batch),
  "h" (query head), "kh" (kv head), "q" / "k" (query / key positions, blocked), "qblk" (one
  entry per q block), "1" (a broadcast size-1 axis), "n" (scalar tables) or ``FULL_DIM``
  (taken whole); ``attnlab.kernels.flash.operands`` turns roles into BlockSpecs, index maps
  and in-kernel slices for both drivers.
* ``Coords``: block coordinates of one program (triton) or grid step (mosaic).
* ``table_index``: where a row (and step) of a tile table sits in the flat table arrays.

Kernel kinds are "fwd" (rows = q blocks), "dq" (rows = q blocks) and "dkv" (rows = k blocks).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

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
  # score_mod closure-converted for the forward and the backward tiles:
  # fn(s [bq, bk], batch, head, q_idx [bq, 1], kv_idx [1, bk], *mods) (None: no score_mod),
  # and the shapes of its captured arrays ("mod<n>" operands, read whole by every program).
  score_mod_fwd: Any = None
  score_mod_bwd: Any = None
  mod_shapes: tuple = ()
  # FunctionMasks of the mask program ("function" ops): per mask (fwd jaxpr, bwd jaxpr, first
  # "mod<n>" operand of its captured arrays, their count, whether it reads the batch index).
  mask_functions: tuple = ()

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


@dataclasses.dataclass
class Coords:
  b: Any
  h: Any = None
  kh: Any = None
  i: Any = None  # q block
  j: Any = None  # k block
  g: Any = None  # head within the group (dkv)
  t: Any = None  # step (mosaic)


def table_index(cfg: Config, kind: str, b, r, t=None):
  """Flat index of row ``r`` (of batch element ``b`` when the tables are per batch element)
  in kernel ``kind``'s ``n_first`` / ``n_tot`` arrays, or of its step ``t`` in the table."""
  bb = b if cfg.table_batched(kind) else 0
  row = bb * cfg.n_rows(kind) + r
  return row if t is None else row * cfg.steps(kind) + t
