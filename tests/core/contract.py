"""The attention contract: a test base class that every (mechanism, implementation) pair runs.

Modelled on tokamax's ``AttentionTestBase``: ``AttentionContractBase`` holds the checks and
``test_contract.py`` makes one concrete subclass per pair found in ``attnlab.core.registry``
at collection time, so a newly registered mechanism or implementation is covered with no edit
here. A subclass sets ``MECHANISM`` and ``IMPLEMENTATION``.

Where the expected values come from (never from the code under test alone):

* every non-"xla" implementation is compared with its mechanism's "xla" implementation, on
  values and on gradients w.r.t. q, k and v;
* "softmax" (every implementation) is compared with ``jax.nn.dot_product_attention``;
* every pair is checked against identities the math guarantees for any attention mechanism:
  GQA equals MHA with the K/V heads repeated, keys a mask removes do not influence the output
  (nor receive gradient), and permuting the batch permutes the output;
* ``jax.jit`` / ``jax.pmap`` (chex variants) do not change the values.

Nothing here is specific to one mechanism except ``jax.nn`` for "softmax". Two facts are
derived by trying rather than listed: whether a mechanism runs with no hyperparameters at all
(else the pair is skipped with the error as the reason), and whether it accepts GQA (CRATE
uses one projection as q, k and v, so it needs ``kv_heads == heads``). The head dimension of a
pair is the smallest candidate its ``supports`` accepts (Pallas: 64).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import re
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

import attnlab
from attnlab import masks
from attnlab.core import registry

# The contract is about the pure functions; importing these registers everything there is
# (attnlab.nn: module mechanisms; attnlab.kernels: the "pallas" implementations).
for _mod in ("attnlab.nn", "attnlab.kernels"):
  importlib.import_module(_mod)

REFERENCE = "xla"

# Interpret-mode implementations (Pallas kernels on CPU) cost about a second per compile, so
# their cases use tiny shapes, and compute a gradient once (float32, in test_vs_xla).
INTERPRETED = frozenset({"pallas"}) if jax.default_backend() == "cpu" else frozenset()

# XLA CPU optimisation level 0 roughly halves compile time (the kernels tests do the same);
# it does not change float results at the tolerances below.
FAST_COMPILE = {"xla_backend_optimization_level": 0}

# Tolerances, as max |got - want| <= TOL * max |want| (plus the same relative bound
# elementwise, see ``assert_close``), keyed by the dtype of q/k/v.
#
# float32: the conftest sets matmul precision to "highest" and every implementation
#   accumulates in float32; the only differences are summation order (tiles, online-softmax
#   rescaling, exp2 with log2(e) folded into the scale in the kernels): a few float32 ulps
#   (1.2e-7) times sqrt(#terms). Observed at these shapes: <= 4.3e-7 (values and grads,
#   chunked and pallas); 1e-5 leaves a 20x margin and still catches any real mistake.
# bfloat16: inputs and outputs are bf16 (8-bit mantissa, relative step 2^-8 = 3.9e-3). The
#   reference computes in float32 from the bf16 inputs and rounds once; chunked/pallas (like
#   FlashAttention) also round the probabilities (and dS in the backward) to bf16 before the
#   second matmul, so they differ by one or two bf16 steps. Observed: <= 7e-3 (pallas dq);
#   2.5e-2 (as tests/kernels) is ~6 steps.
TOL = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.bfloat16): 2.5e-2}
GRAD_TOL = TOL
# Identities (GQA, batch permutation, jit vs no jit) compare one implementation with itself
# on rearranged float32 inputs: the same arithmetic in another order or fusion, so the
# float32 bound above applies.
SELF_TOL = TOL[jnp.dtype(jnp.float32)]

DTYPES = (("float32", jnp.float32), ("bfloat16", jnp.bfloat16))
# Head dims tried in order; a pair uses the first one its implementation's supports accepts.
HEAD_DIM_CANDIDATES = (16, 32, 64, 128, 256)


# ------------------------------------------------------------------------------------------
# Discovery.


def discover_pairs() -> list[tuple[str, str]]:
  """Every registered (mechanism, implementation), sorted; read from the registry."""
  return [(name, impl) for name in registry.list_mechanisms()
          for impl in sorted(registry.get_mechanism(name).implementations)]


def mechanisms_without_implementations() -> list[str]:
  return [n for n in registry.list_mechanisms()
          if not registry.get_mechanism(n).implementations]


@dataclasses.dataclass(frozen=True)
class Geometry:
  b: int = 2
  tq: int = 16
  tk: int = 24  # != tq, so [Tq, Tk] transposition mistakes show
  h: int = 4
  kh: int = 2   # GQA, groups of 2
  d: int = 16

  def replace(self, **kw) -> "Geometry":
    return dataclasses.replace(self, **kw)


def make_qkv(g: Geometry, dtype=jnp.float32, seed: int = 0, lead: tuple[int, ...] = ()):
  """Standard-normal q ``[*lead, B, Tq, H, D]``, k and v ``[*lead, B, Tk, K, D]`` (numpy RNG:
  no compile per shape)."""
  rng = np.random.RandomState(seed)
  mk = lambda *s: jnp.asarray(rng.standard_normal(lead + s).astype(np.float32), dtype)
  return mk(g.b, g.tq, g.h, g.d), mk(g.b, g.tk, g.kh, g.d), mk(g.b, g.tk, g.kh, g.d)


def cotangent(shape, seed: int = 7):
  return jnp.asarray(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))


def _short(e: BaseException) -> str:
  return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


@functools.lru_cache(maxsize=None)
def mechanism_geometry(mechanism: str) -> tuple[Geometry | None, str]:
  """``(geometry, note)``: the first geometry the mechanism's reference runs on with no
  hyperparameters -- GQA with Tq != Tk, GQA with Tq == Tk, then the same with MHA (``note``
  says why a fallback was needed) -- else ``(None, why)``.

  Runs the reference implementation eagerly on tiny inputs (milliseconds). A mechanism
  that needs hyperparameters to run at all raises here (TypeError for a missing argument or
  ValueError from its own checks) and its pairs are skipped with that error as the reason.
  """
  mech = registry.get_mechanism(mechanism)
  impl = REFERENCE if REFERENCE in mech.implementations else sorted(mech.implementations)[0]
  errors = []
  base = Geometry()
  for g in (base, base.replace(tk=base.tq), base.replace(kh=base.h),
            base.replace(kh=base.h, tk=base.tq)):
    q, k, v = make_qkv(g)
    try:
      out = attnlab.attention(q, k, v, mechanism=mechanism, implementation=impl)
      jax.block_until_ready(out)
    except (TypeError, ValueError) as e:
      errors.append(f"{g}: {_short(e)}")
      continue
    return g, "" if not errors else f"refused {errors}"
  return None, f"refused {errors}"


def pair_geometry(mechanism: str, implementation: str) -> tuple[Geometry | None, str]:
  """The mechanism geometry with the smallest head dim ``implementation`` supports."""
  g, note = mechanism_geometry(mechanism)
  if g is None:
    return None, f"{mechanism!r} does not run without hyperparameters: {note}"
  impl = registry.get_mechanism(mechanism).implementations[implementation]
  reasons = []
  for d in HEAD_DIM_CANDIDATES:
    gd = g.replace(d=d)
    if implementation in INTERPRETED:
      gd = gd.replace(tk=gd.tq)  # one key block: interpret mode is slow
    q, k, v = make_qkv(gd)
    reason = impl.supports(q=q, k=k, v=v, mask=None, bias=None, scale=None, softcap=None,
                           alibi_slopes=None, q_offset=0, head_mask=None, return_weights=False)
    if reason is None:
      return gd, note
    reasons.append(reason)
  return None, f"{implementation!r} refuses every head dim {HEAD_DIM_CANDIDATES}: {reasons}"


# ------------------------------------------------------------------------------------------
# Comparison helpers.


def _f32(x):
  return np.asarray(jnp.asarray(x, jnp.float32))


def assert_close(got, want, tol: float, what: str = ""):
  """``|got - want| <= tol * max|want| + tol * |want|`` elementwise, on every leaf."""
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    g, w = _f32(g), _f32(w)
    scale = max(float(np.abs(w).max()), 1e-6)
    err = float(np.abs(g - w).max()) / scale
    chex.assert_trees_all_close(g, w, rtol=tol, atol=tol * scale,
                                custom_message=f"{what}: max error {err:.3g} of max |want|, "
                                f"tolerance {tol:.3g}")


def fast_jit(fn):
  return jax.jit(fn, compiler_options=FAST_COMPILE)


@functools.lru_cache(maxsize=None)
def jitted_attention(mechanism: str, implementation: str, **static):
  """``jit(attention)`` for one pair and hashable options (``is_causal=...``), cached so
  tests calling it on same-shaped inputs share one compile."""
  return fast_jit(functools.partial(attnlab.attention, mechanism=mechanism,
                                    implementation=implementation, **static))


def compile_fast(fn, *args):
  """``fn`` compiled for ``args``' shapes (call it again on same-shaped inputs)."""
  return jax.jit(fn).lower(*args).compile(FAST_COMPILE)


def jit_fast(fn, *args):
  return compile_fast(fn, *args)(*args)


def fwd_vjp_compiled(fn, q, k, v, ct):
  """Compiled ``(q, k, v, ct) -> (out, (dq, dk, dv))`` of ``fn(q, k, v)``."""
  def run(q, k, v, ct):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(ct.astype(out.dtype))
  return compile_fast(run, q, k, v, ct)


def fwd_vjp(fn, q, k, v, ct):
  """``(out, (dq, dk, dv))`` of ``fn(q, k, v)`` for cotangent ``ct``, in one fast compile."""
  return fwd_vjp_compiled(fn, q, k, v, ct)(q, k, v, ct)


# Calls a pair may refuse. Each is checked only where the implementation's own ``supports``
# refuses it: then an explicit request must raise ValueError naming the implementation.
def _probe_calls(g: Geometry) -> dict[str, dict[str, Any]]:
  q, k, v = make_qkv(g)
  q8, k8, v8 = make_qkv(g.replace(d=8))
  arr = masks.ArrayMask(jnp.asarray(np.tril(np.ones((g.tq, g.tk), bool))))
  return {
      "unknown option": dict(q=q, k=k, v=v, contract_unknown_option=1),
      "head_dim 8": dict(q=q8, k=k8, v=v8),
      "ArrayMask": dict(q=q, k=k, v=v, mask=arr),
      "block_q=3": dict(q=q, k=k, v=v, block_q=3),
      "return_weights": dict(q=q, k=k, v=v, return_weights=True),
      "float16": dict(q=q.astype(jnp.float16), k=k.astype(jnp.float16),
                      v=v.astype(jnp.float16)),
      "softcap": dict(q=q, k=k, v=v, softcap=5.0),
      "alibi": dict(q=q, k=k, v=v, alibi_slopes=attnlab.alibi_slopes(g.h)),
      "bias": dict(q=q, k=k, v=v, bias=jnp.zeros((1, g.h, g.tq, g.tk))),
      "head_mask": dict(q=q, k=k, v=v, head_mask=jnp.ones((g.h,))),
  }


_CALL_DEFAULTS = dict(mask=None, bias=None, scale=None, softcap=None, alibi_slopes=None,
                      q_offset=0, head_mask=None, return_weights=False)


def reference_hyperparameters() -> dict[str, tuple[str, Any]]:
  """``{name: (mechanism, default)}`` for every keyword some mechanism's reference takes
  beyond the shared call (``sigmoid_bias``, ``max_distance``, ...), from the signatures."""
  # score_mod is attention()'s own keyword (None means no mod and is not passed on).
  shared = set(_CALL_DEFAULTS) | {"q", "k", "v", "score_mod"}
  out = {}
  for name in registry.list_mechanisms():
    impl = registry.get_mechanism(name).implementations.get(REFERENCE)
    if impl is None:
      continue
    try:
      params = inspect.signature(impl.fn).parameters.values()
    except (TypeError, ValueError):
      continue
    for p in params:
      if p.kind is p.KEYWORD_ONLY and p.name not in shared:
        out.setdefault(p.name, (name, None if p.default is p.empty else p.default))
  return out


# ------------------------------------------------------------------------------------------
# The base class.


class AttentionContractBase(chex.TestCase):
  """Checks every (mechanism, implementation) pair must pass. Subclasses set the pair."""

  MECHANISM: str | None = None
  IMPLEMENTATION: str | None = None

  def setUp(self):
    super().setUp()
    if self.MECHANISM is None:
      self.skipTest("abstract base: subclasses set MECHANISM and IMPLEMENTATION")
    geometry, note = pair_geometry(self.MECHANISM, self.IMPLEMENTATION)
    if geometry is None:
      self.skipTest(note)
    self.g = geometry
    self.impl = registry.get_mechanism(self.MECHANISM).implementations[self.IMPLEMENTATION]
    self.is_reference = self.IMPLEMENTATION == REFERENCE
    self.interpreted = self.IMPLEMENTATION in INTERPRETED

  # -- calling -------------------------------------------------------------------------------

  def attend(self, q, k, v, implementation: str | None = None, **kw):
    return attnlab.attention(q, k, v, mechanism=self.MECHANISM,
                             implementation=implementation or self.IMPLEMENTATION, **kw)

  def jitted(self, implementation: str | None = None, **static):
    """This pair's (or ``implementation``'s) attention, jitted for hashable ``static``
    options; one compile per shape, shared between tests."""
    return jitted_attention(self.MECHANISM, implementation or self.IMPLEMENTATION, **static)

  def reference(self, q, k, v, **static):
    return self.jitted(REFERENCE, **static)(q, k, v)

  def skip_unless_supported(self, what: str, **call):
    reason = self.impl.supports(**{**_CALL_DEFAULTS, **call})
    if reason is not None:
      self.skipTest(f"{self.IMPLEMENTATION!r} does not support {what}: {reason}")

  def check_output(self, out, dtype, lead=()):
    g = self.g
    chex.assert_shape(out, lead + (g.b, g.tq, g.h, g.d))
    chex.assert_type(out, dtype)
    chex.assert_tree_all_finite(out)

  # -- shape, dtype and values under jit / no jit / pmap ------------------------------------

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_transforms(self):
    """Output ``[B, Tq, H, Dv]`` in q's dtype, equal to "xla" with and without jit and pmap.

    The pmap variant maps over a leading device axis with *different* inputs per device;
    every device's slice must equal the reference on that slice.
    float32 only: bfloat16 shape, dtype and values are checked in test_vs_xla (each variant
    is a compile, and compiles are the runtime here).
    """
    g, dtype = self.g, jnp.float32
    fn = lambda q, k, v: self.attend(q, k, v, is_causal=True)
    tol = SELF_TOL if self.is_reference else TOL[jnp.dtype(dtype)]
    if self.variant.type == chex.ChexVariantType.WITH_PMAP:
      # Interpret-mode kernels run once per device on 2 shared cores: two devices suffice.
      n = 2 if self.interpreted else jax.local_device_count()
      q, k, v = make_qkv(g, dtype, lead=(n,))
      out = self.variant(fn, broadcast_args_to_devices=False, reduce_fn=None, n_devices=n)(
          q, k, v)
      self.check_output(out, dtype, lead=(n,))
      for i in range(n):  # one compile of the reference, shared with the other variants
        want = self.reference(q[i], k[i], v[i], is_causal=True)
        assert_close(out[i], want, tol, f"pmap device {i} vs xla")
    else:
      q, k, v = make_qkv(g, dtype)
      out = self.variant(fn)(q, k, v)
      self.check_output(out, dtype)
      want = self.reference(q, k, v, is_causal=True)
      assert_close(out, want, tol, f"{self.variant.type.name} vs xla")

  # -- values and gradients against the reference implementation ----------------------------

  def _hard_mask(self):
    """Causal, a short key length for batch 0, and two padded (fully masked) query rows."""
    g = self.g
    return (masks.CausalMask()
            & masks.ValidLengthMask(kv_lengths=jnp.array([g.tk - 5, g.tk]),
                                    q_lengths=jnp.array([g.tq - 2, g.tq])))

  @parameterized.named_parameters(*DTYPES)
  def test_vs_xla(self, dtype):
    """Values and grads w.r.t. q, k, v: finite, right shapes/dtypes, and (non-"xla") equal
    to the "xla" implementation, under a mask with short keys and fully masked query rows.

    bfloat16 gradients are compared for non-interpreted implementations only (interpreted
    kernels compute one gradient per pair, in float32), and "xla"'s own bf16 gradient is not
    computed (nothing to compare it with; its float32 one is checked finite).
    """
    g, dt = self.g, jnp.dtype(dtype)
    q, k, v = make_qkv(g, dtype, seed=1)
    m = self._hard_mask()
    ct = cotangent((g.b, g.tq, g.h, g.d))
    fn = lambda q, k, v: self.attend(q, k, v, mask=m)
    if dt != jnp.float32 and (self.interpreted or self.is_reference):
      out, grads = jit_fast(fn, q, k, v), None
    else:
      out, grads = fwd_vjp(fn, q, k, v, ct)
    self.check_output(out, dtype)
    if grads is not None:
      chex.assert_tree_all_finite(grads)
      chex.assert_trees_all_equal_shapes_and_dtypes(grads, (q, k, v))
    # Padded query rows see no key: zeros, by attnlab's contract.
    chex.assert_trees_all_equal(_f32(out[0, g.tq - 2:]), 0.0)
    if self.is_reference:
      return
    ref = lambda q, k, v: self.attend(q, k, v, implementation=REFERENCE, mask=m)
    if grads is None:
      want_out, want_grads = jit_fast(ref, q, k, v), None
    else:
      want_out, want_grads = fwd_vjp(ref, q, k, v, ct)
    assert_close(out, want_out, TOL[dt], "output vs xla")
    if grads is not None:
      for name, a, b in zip("qkv", grads, want_grads):
        assert_close(a, b, GRAD_TOL[dt], f"d{name} vs xla")

  # -- honest references and identities ----------------------------------------------------

  @parameterized.named_parameters(("full", False), ("causal", True))
  def test_softmax_matches_jax_nn(self, is_causal):
    """"softmax" equals ``jax.nn.dot_product_attention`` (GQA, Tq != Tk, top-left causal)."""
    if self.MECHANISM != "softmax":
      self.skipTest("jax.nn.dot_product_attention is a reference for softmax only")
    q, k, v = make_qkv(self.g, seed=2)
    got = self.jitted(is_causal=is_causal)(q, k, v)
    want = jax.nn.dot_product_attention(q, k, v, is_causal=is_causal)
    assert_close(got, want, TOL[jnp.dtype(jnp.float32)], "vs jax.nn.dot_product_attention")

  def test_gqa_equals_mha_with_repeated_kv(self):
    """Query head h reads kv head h // (H // K): same as MHA on ``jnp.repeat(k, H // K)``."""
    g = self.g
    if g.kh == g.h:
      self.skipTest(f"{self.MECHANISM!r}: {mechanism_geometry(self.MECHANISM)[1]}")
    q, k, v = make_qkv(g, seed=3)
    rep = lambda x: jnp.repeat(x, g.h // g.kh, axis=2)
    fn = self.jitted(is_causal=True)
    got, want = fn(q, k, v), fn(q, rep(k), rep(v))
    assert_close(got, want, SELF_TOL, "GQA vs repeated-KV MHA")

  def _masked_case(self, kind):
    """``(mask kwargs, bool [B, Tk] keys to perturb, bool [B, Tq] rows to compare)``."""
    g = self.g
    rows = np.ones((g.b, g.tq), bool)
    if kind == "lengths":
      lengths = np.array([g.tk - 7, g.tk - 2])[:g.b]
      keys = np.arange(g.tk)[None] >= lengths[:, None]
      return dict(mask=masks.ValidLengthMask(jnp.asarray(lengths))), keys, rows
    if kind == "array":
      rng = np.random.RandomState(4)
      keep_key = rng.rand(g.b, g.tk) < 0.6
      keep_key[:, 0] = True
      allowed = keep_key[:, None, :] & (rng.rand(g.b, g.tq, g.tk) < 0.7)
      allowed[:, :, 0] = True  # every row sees a key
      return dict(mask=masks.ArrayMask(jnp.asarray(allowed))), ~keep_key, rows
    if kind == "causal":
      t0 = g.tq // 2  # queries i < t0 see only keys j <= i < t0
      keys = np.broadcast_to(np.arange(g.tk)[None] >= t0, (g.b, g.tk))
      rows = np.broadcast_to(np.arange(g.tq)[None] < t0, (g.b, g.tq))
      return dict(is_causal=True), keys, rows
    raise ValueError(kind)

  @parameterized.named_parameters(("valid_length", "lengths"), ("array", "array"),
                                  ("causal", "causal"))
  def test_masked_keys_have_no_influence(self, kind):
    """Changing the k/v of keys a mask removes leaves the output unchanged -- exactly: a
    removed key contributes an exact 0 (probability exp(-inf) or sigmoid(-inf), or its tile
    is skipped), so any difference is a leak. For the valid-length mask the removed keys
    also get exactly zero gradient (not for interpreted kernels, whose one gradient is in
    test_vs_xla)."""
    g = self.g
    kw, keys, rows = self._masked_case(kind)
    if "mask" in kw:
      q0, k0, v0 = make_qkv(g)
      self.skip_unless_supported(type(kw["mask"]).__name__, q=q0, k=k0, v=v0, mask=kw["mask"])
    q, k, v = make_qkv(g, seed=5)
    _, k2, v2 = make_qkv(g, seed=6)
    sel = jnp.asarray(keys)[:, :, None, None]
    k2 = jnp.where(sel, 10.0 * k2 + 3.0, k)  # large, so any leak is visible
    v2 = jnp.where(sel, 10.0 * v2 - 3.0, v)
    fn = lambda q, k, v: self.attend(q, k, v, **kw)
    rmask = jnp.asarray(rows)[:, :, None, None]
    if self.interpreted or kind != "lengths":
      run = compile_fast(fn, q, k, v)
      a, b = run(q, k, v), run(q, k2, v2)
    else:
      ct = cotangent((g.b, g.tq, g.h, g.d)) * rmask  # only the compared rows
      run = fwd_vjp_compiled(fn, q, k, v, ct)
      a, (_, dk, dv) = run(q, k, v, ct)
      b, _ = run(q, k2, v2, ct)
      for name, grad in (("dk", dk), ("dv", dv)):
        chex.assert_trees_all_equal(_f32(jnp.where(sel, grad, 0.0)), 0.0,
                                    custom_message=f"{name} of masked keys")
    chex.assert_trees_all_equal(jnp.where(rmask, a, 0.0), jnp.where(rmask, b, 0.0))

  def test_batch_permutation(self):
    """Permuting the batch (and the per-batch mask with it) permutes the output."""
    g = self.g.replace(b=3)
    q, k, v = make_qkv(g, seed=8)
    lengths = np.array([g.tk - 6, g.tk, g.tk - 1])
    perm = np.array([2, 0, 1])
    fn = lambda q, k, v, n: self.attend(q, k, v, mask=masks.ValidLengthMask(n))
    run = compile_fast(fn, q, k, v, jnp.asarray(lengths))
    got = run(q[perm], k[perm], v[perm], jnp.asarray(lengths[perm]))
    want = run(q, k, v, jnp.asarray(lengths))[perm]
    assert_close(got, want, SELF_TOL, "permuted batch")

  def test_return_weights(self):
    """``return_weights``: the same output, and weights ``[B, H, Tq, Tk]``."""
    g = self.g
    q, k, v = make_qkv(g, seed=9)
    self.skip_unless_supported("return_weights", q=q, k=k, v=v, return_weights=True)
    out, w = self.jitted(is_causal=True, return_weights=True)(q, k, v)
    chex.assert_shape(w, (g.b, g.h, g.tq, g.tk))
    chex.assert_tree_all_finite(w)
    want = self.reference(q, k, v, is_causal=True)
    assert_close(out, want, TOL[jnp.dtype(jnp.float32)], "output with return_weights")
    # Causal: no weight on future keys.
    future = np.triu(np.ones((g.tq, g.tk), bool), 1)
    chex.assert_trees_all_equal(_f32(w)[..., future], 0.0)

  # -- refusals ---------------------------------------------------------------------------

  def test_unknown_implementation_raises(self):
    q, k, v = make_qkv(self.g)
    with self.assertRaisesRegex(ValueError, r"unknown implementation 'nonexistent'"):
      self.attend(q, k, v, implementation="nonexistent")

  def test_refusals_raise_value_error_naming_the_implementation(self):
    """Every call ``supports`` refuses raises ValueError naming the implementation and the
    reason when that implementation is requested explicitly; an unknown option is refused
    by every implementation (so "auto" can fall back and typos are not swallowed)."""
    refused = {}
    for what, call in _probe_calls(self.g).items():
      reason = self.impl.supports(**{**_CALL_DEFAULTS, **call})
      if what == "unknown option":
        self.assertIsNotNone(reason, "an unknown option must be refused")
      if reason is None:
        continue
      refused[what] = reason
      q, k, v = call.pop("q"), call.pop("k"), call.pop("v")
      with self.subTest(what), self.assertRaisesRegex(
          ValueError, re.escape(f"implementation {self.IMPLEMENTATION!r}") + ".*"
          + re.escape(reason.splitlines()[0][:60])):
        self.attend(q, k, v, **call)
    self.assertIn("unknown option", refused)

  def test_refuses_other_mechanisms_hyperparameters(self):
    """A hyperparameter of another mechanism that this mechanism's reference refuses (e.g.
    ``sigmoid_bias`` for "softmax") is refused by every implementation, not silently ignored
    (else "auto" would pick that implementation and drop the argument)."""
    q, k, v = make_qkv(self.g)
    mech = registry.get_mechanism(self.MECHANISM)
    checked = []
    for name, (owner, default) in sorted(reference_hyperparameters().items()):
      call = {**_CALL_DEFAULTS, "q": q, "k": k, "v": v, name: default}
      if mech.implementations[REFERENCE].supports(**call) is None:
        continue  # a hyperparameter of this mechanism (or one its reference accepts)
      checked.append(name)
      reason = self.impl.supports(**call)
      self.assertIsNotNone(reason, f"{self.IMPLEMENTATION!r} of {self.MECHANISM!r} accepts "
                           f"{name}={default!r} (a hyperparameter of {owner!r}) that "
                           f"{REFERENCE!r} refuses")
      with self.assertRaisesRegex(ValueError, re.escape(f"implementation "
                                                        f"{self.IMPLEMENTATION!r}")):
        self.attend(q, k, v, **{name: default})
    if not checked:
      self.skipTest("no other mechanism has a hyperparameter this one refuses")
