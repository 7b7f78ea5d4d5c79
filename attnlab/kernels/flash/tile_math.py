"""Per-tile math shared by the three kernels and both drivers.

``Tile`` is the loaded context of one program: ``scores`` computes the logits of a tile (i, j)
with attnlab's extras in its order -- ``q.k * scale``, soft-capping ``c * tanh(s / c)``, the
additive bias, ALiBi ``-slope * |q_pos + q_offset - k_pos|`` from iotas -- in the normaliser's
domain (base 2 for softmax: ``log2(e)`` folded into the scale), then masks it in-kernel on
PARTIAL tiles (the compiled mask program of ``attnlab.kernels.flash.masks`` and the keys past
``kv_len``). ``probs_and_grads`` recomputes the probabilities of a tile and the gradient of its
logits for the backward kernels. The float32-accumulating dots and the (optionally
``tanh.approx``-based) sigmoid live here too.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from attnlab.kernels.flash import operands
from attnlab.kernels.flash import masks
from attnlab.kernels.flash import ref_reads
from attnlab.kernels.flash.config import F32, LOG2E, Config, Coords


def dot_nt(a, b, precision):
  """a [m, d] . b [n, d]^T -> [m, n] float32."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=F32,
                         precision=precision)


def dot_nn(a, b, precision):
  return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=F32,
                         precision=precision)


def dot_tn(a, b, precision):
  """a [m, n]^T . b [m, d] -> [n, d] float32."""
  return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=F32,
                         precision=precision)


def tanh(cfg: Config, x):
  if cfg.fast_math:
    from jax.experimental.pallas import triton as plgpu
    return plgpu.approx_tanh(x)
  return jnp.tanh(x)


def sigmoid(cfg: Config, x):
  if cfg.fast_math:  # one MUFU op instead of exp + reciprocal
    return 0.5 + 0.5 * tanh(cfg, 0.5 * x)
  return 1.0 / (1.0 + jnp.exp(-x))


class Tile:
  """Loaded context of one program: how to fetch extras for a tile (i, j)."""

  def __init__(self, cfg: Config, kind: str, refs: dict, c: Coords, head):
    self.cfg, self.kind, self.refs, self.c, self.head = cfg, kind, refs, c, head
    self.ops = refs["__ops__"]

  def load(self, name, i=None, j=None, g=None):
    ref = self.refs[name]
    return ref[operands.selector(self.cfg, self.kind, self.ops[name], i=i, j=j, g=g)]

  def has(self, name):
    return name in self.refs

  def scalar(self, s):
    return self.refs["scalars"][self.c.b, s]

  def mod_ref(self, n: int):
    """The n-th captured array ("mod<n>" operand), left in its ref (read by index) on the
    Triton driver; loaded whole on Mosaic TPU, whose refs take no vector indexers."""
    ref = self.refs[f"mod{n}"]
    arr = ref_reads.RefArray(ref, self.cfg.mod_shapes[n], ref.dtype)
    return arr if self.cfg.backend == "triton" else arr.whole()

  def mask_function(self, n: int, q_pos, k_pos, q_offset):
    """Boolean tile of the n-th FunctionMask (positions past the ends clamped; ignored)."""
    fwd, bwd, start, count, batched = self.cfg.mask_functions[n]
    refs = [self.mod_ref(i) for i in range(start, start + count)]
    b = jnp.asarray(self.c.b if batched else 0, jnp.int32)
    q_idx = jnp.minimum(q_pos, self.cfg.q_len - 1) + q_offset
    k_idx = jnp.minimum(k_pos, self.cfg.kv_len - 1)
    jaxpr = fwd if self.kind == "fwd" else bwd
    return ref_reads.evaluate(jaxpr, [*refs, b, q_idx, k_idx])[0]

  def score_mod(self):
    """This kernel's score_mod, split for in-place table reads (``ref_reads.SplitMod``;
    None without one)."""
    return self.cfg.score_mod_fwd if self.kind == "fwd" else self.cfg.score_mod_bwd

  def apply_mod(self, s, q_pos, k_pos, with_vjp: bool):
    """``score_mod`` on the natural-unit logits ``s [bq, bk]``: (modified, vjp fn | None).
    Its captured arrays stay in their refs; only the elements the tile indexes are read."""
    mod = self.score_mod()
    refs = [self.mod_ref(n) for n in range(mod.n_consts)]
    b = jnp.asarray(self.c.b, jnp.int32)
    h = jnp.asarray(self.head, jnp.int32)
    # Padding past the ends is clamped to the last real position (as in core/chunked.py): a
    # score_mod reading tables by position never reads out of range.
    q_idx = jnp.minimum(q_pos, self.cfg.q_len - 1) + self.scalar(0)
    k_idx = jnp.minimum(k_pos, self.cfg.kv_len - 1)
    return ref_reads.apply(mod, refs, s, b, h, q_idx, k_idx, with_vjp)

  def scores(self, q, k, i, j, *, masked: bool, g=None, with_vjp: bool = False):
    """Logits of tile (i, j) in the normaliser's domain (base 2 for softmax), masked to -inf
    where not allowed, ``tanh`` of the capped logits (or None), and with ``with_vjp`` the
    score_mod's vjp (d logits after it -> before it; None without a score_mod)."""
    cfg = self.cfg
    bq, bk = cfg.blocks(self.kind)
    s = dot_nt(q, k, cfg.precision)
    c2 = LOG2E if cfg.normalizer == "softmax" else 1.0
    has_mod = self.score_mod() is not None
    mod_vjp = None
    extras = self.has("bias") or cfg.has_alibi or has_mod
    t = None
    if cfg.softcap is not None:
      t = tanh(cfg, s * (cfg.scale / cfg.softcap))
      s = t * (cfg.softcap * (1.0 if extras else c2))
    else:
      s = s * (cfg.scale * (1.0 if extras else c2))
    need_pos = masked or cfg.has_alibi or has_mod
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
      if has_mod:
        s, mod_vjp = self.apply_mod(s, q_pos, k_pos, with_vjp)
      if c2 != 1.0:
        s = s * c2
    if masked:
      ok = None
      if cfg.mask_program is not None:
        ctx = masks.TileContext(
            q_pos=q_pos, k_pos=k_pos, scalar=lambda n: self.scalar(1 + n),
            q_vec=lambda n: self.load(f"qv{n}", i=i, j=j, g=g),
            k_vec=lambda n: self.load(f"kv{n}", i=i, j=j, g=g),
            function=self.mask_function)
        ok = masks.evaluate(cfg.mask_program, ctx)
      if cfg.ragged_k:
        in_range = k_pos < cfg.kv_len
        ok = in_range if ok is None else ok & in_range
      if ok is not None:
        s = jnp.where(ok, s, -jnp.inf)
    if with_vjp:
      return s, t, mod_vjp
    return s, t

  def probs_and_grads(self, s, t, do, v, lse=None, delta=None, mod_vjp=None):
    """Recomputed probabilities and d logits (``ds`` w.r.t. the biased logits before the
    score_mod, ``ds_raw`` w.r.t. ``q.k * scale`` before soft-capping)."""
    cfg = self.cfg
    dp = dot_nt(do, v, cfg.precision)
    if cfg.normalizer == "softmax":
      p = jnp.exp2(s - lse)
      ds = p * (dp - delta)
    else:
      p = sigmoid(cfg, s + cfg.sigmoid_bias)
      ds = dp * (p * (1.0 - p))
    if mod_vjp is not None:
      ds = mod_vjp(ds)
    ds_raw = ds if t is None else ds * (1.0 - t * t)
    return p, ds, ds_raw
