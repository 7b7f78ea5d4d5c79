"""Pieces shared by the score-modifying mechanisms of this package.

Layout as ``attnlab.core.common``: q ``[B, Tq, H, D]``, k/v ``[B, Tk, K, D]`` (``H % K == 0``,
query head ``h`` reads kv head ``h // (H // K)``), logits ``[B, H, Tq, Tk]`` float32.
Query ``i`` sits at absolute position ``q_offset + i``; key ``j`` at position ``j``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from attnlab.core import common
from attnlab.core.mechanisms import softmax as softmax_lib

Array = jax.Array


def prepare(q, k, v, mask, bias, scale, alibi_slopes, head_mask):
  """Validation shared with the dense reference: ``(mask, bias, scale, alibi, head_mask)``."""
  return softmax_lib.prepare(q, k, v, mask, bias, scale, alibi_slopes, head_mask)


def positions(tq: int, tk: int, q_offset: Any) -> tuple[Array, Array]:
  """Absolute int32 positions of the queries ``[Tq]`` and keys ``[Tk]``."""
  q_pos = jnp.arange(tq, dtype=jnp.int32) + jnp.asarray(q_offset, jnp.int32)
  return q_pos, jnp.arange(tk, dtype=jnp.int32)


def group_heads(x: Array, kv_heads: int) -> Array:
  """``[B, T, H, D]`` -> ``[B, T, K, H // K, D]`` (query heads grouped by their kv head)."""
  b, t, h, d = x.shape
  return x.reshape(b, t, kv_heads, h // kv_heads, d)


def repeat_kv(x: Array, num_heads: int) -> Array:
  """``[B, T, K, D]`` -> ``[B, T, H, D]``: kv head ``h // (H // K)`` for query head ``h``."""
  return jnp.repeat(x, num_heads // x.shape[2], axis=2)


def head_param(x: Any, name: str, num_heads: int, trailing: tuple[int, ...] = ()) -> Array:
  """A per-head value: scalar, ``[H]`` or ``[H, *trailing]`` -> float32 broadcastable to
  ``[H, *trailing]``."""
  x = jnp.asarray(x, jnp.float32)
  ok = (x.ndim == 0 or x.shape == (num_heads,) or x.shape == (num_heads, *trailing)
        or (trailing and x.shape == (num_heads, 1)))
  if not ok:
    raise ValueError(f"{name} must be a scalar, [heads]={(num_heads,)} or "
                     f"{(num_heads, *trailing)}, got shape {x.shape}")
  if x.ndim == 0:
    x = jnp.broadcast_to(x, (num_heads,))
  if x.ndim == 1 and trailing:
    x = x.reshape(num_heads, *([1] * len(trailing)))
  return x


def finish_logits(raw: Array, *, scale: float, softcap: float | None, bias: Array | None,
                  alibi: Array | None, q_offset: Any) -> Array:
  """``cap(raw * scale) + bias + alibi`` in float32 (the order of ``common.dense_logits``)."""
  _, _, tq, tk = raw.shape
  s = common.apply_softcap(raw.astype(jnp.float32) * jnp.float32(scale), softcap)
  if bias is not None:
    s = s + bias.astype(jnp.float32)
  if alibi is not None:
    q_pos, k_pos = positions(tq, tk, q_offset)
    s = s + common.alibi_bias(alibi, q_pos, k_pos)
  return s


def qk_raw(q: Array, k: Array) -> Array:
  """Unscaled float32 ``q . k`` ``[B, H, Tq, Tk]`` (grouped over kv heads)."""
  return common.dense_logits(q, k, scale=1.0)


def relative_scores(x: Array, table: Array) -> Array:
  """``out[b, h, i, r] = x[b, i, h'] . table[r, h]`` float32 ``[B, H, Ti, R]`` (``x`` as in
  ``relative_term``): every relative bucket's score, O(Ti R) memory."""
  r, h, d = table.shape
  if x.shape[2] == h:
    return jnp.einsum("bihd,rhd->bhir", x, table, preferred_element_type=jnp.float32)
  kh = x.shape[2]
  tg = table.reshape(r, kh, h // kh, d)
  full = jnp.einsum("bikd,rkgd->bkgir", x, tg, preferred_element_type=jnp.float32)
  return full.reshape(x.shape[0], h, x.shape[1], r)


def relative_term(x: Array, table: Array, index: Array, kv_heads: int | None = None) -> Array:
  """``out[b, h, i, j] = x[b, i, h'] . table[index[i, j], h]`` as float32 ``[B, H, Ti, Tj]``.

  ``x`` is ``[B, Ti, H', D]`` with ``H' = H`` (query side) or ``H' = K`` kv heads (then query
  head ``h`` uses ``x``'s head ``h // (H // K)``); ``table`` is ``[R, H, D]`` (one row per
  relative bucket), ``index`` int ``[Ti, Tj]`` in ``[0, R)``. Computes ``x . table`` for all
  ``R`` buckets, then gathers: O(Ti R D + Ti Tj) instead of O(Ti Tj D).
  """
  full = relative_scores(x, table)
  idx = jnp.broadcast_to(index[None, None], full.shape[:3] + (index.shape[1],))
  return jnp.take_along_axis(full, idx, axis=-1)


def softmax_output(logits: Array, v: Array, mask, head_mask: Array | None, dtype: Any,
                   return_weights: bool, allowed: Array | None = None):
  """Masked softmax of ``logits`` times ``v``; head mask; cast; optional weights.
  ``allowed`` (boolean, broadcastable to ``logits``) further restricts the keys, e.g. a
  routing or window pattern."""
  tq, tk = logits.shape[-2:]
  visible = softmax_lib.dense_mask(mask, tq, tk)
  if allowed is not None:
    visible = allowed if visible is None else allowed & visible
  weights = softmax_lib.masked_softmax(logits, visible)
  out = common.apply_head_mask(common.weighted_values(weights, v), head_mask).astype(dtype)
  return (out, weights) if return_weights else out


def safe_polar(x1: Array, x2: Array) -> tuple[Array, Array]:
  """``(r, theta)`` of ``x1 + i x2`` with finite gradients at 0 (theta := 0 there)."""
  r2 = x1 * x1 + x2 * x2
  nz = r2 > 0
  r = jnp.where(nz, jnp.sqrt(jnp.where(nz, r2, 1.0)), 0.0)
  theta = jnp.arctan2(jnp.where(nz, x2, 0.0), jnp.where(nz, x1, 1.0))
  return r, theta


# ---------------------------------------------------------------------------------------------
# The memory-efficient path of score mechanisms: their extra terms as a score_mod over the
# chunked (online-softmax, O(T) memory) implementation.


def bias_at(bias: Array, b: Array, h: Array, i: Array, j: Array) -> Array:
  """``bias [B|1, H|1, Tq|1, Tk|1]`` gathered at broadcasting indices (size-1 dims at 0)."""
  idx = tuple(x if n > 1 else 0 for x, n in zip((b, h, i, j), bias.shape))
  return bias[idx].astype(jnp.float32)


def attend(implementation: str, normalizer: str = "softmax"):
  """The memory-efficient attention function of ``implementation`` ("chunked" or "pallas"),
  looked up at call time (core does not import the kernels; "pallas" is registered by
  ``attnlab.kernels``). It takes attnlab's contract plus ``score_mod`` and the
  implementation's options."""
  from attnlab.core import chunked  # pylint: disable=g-import-not-at-top
  from attnlab.core import registry  # pylint: disable=g-import-not-at-top
  if implementation == "chunked":
    return lambda q, k, v, **kw: chunked.chunked_attention(q, k, v, normalizer=normalizer,
                                                           **kw)
  if implementation == "pallas":
    from attnlab.core import api  # pylint: disable=g-import-not-at-top
    api.load_plugins()
    impl = registry.get_mechanism(normalizer).implementations.get("pallas")
    if impl is None:
      raise ValueError("implementation 'pallas' needs attnlab.kernels (failed to import)")
    return impl.fn
  raise ValueError(f"implementation must be 'chunked' or 'pallas', got {implementation!r}")


def zeros_qk(q: Array, k: Array, implementation: str) -> tuple[Array, Array]:
  """Zero q, k of a small head dim (1; 8 for the kernels) for passes whose logits come from a
  score_mod alone (``q.k = 0``)."""
  w = 8 if implementation == "pallas" else 1
  return (jnp.zeros(q.shape[:3] + (w,), q.dtype), jnp.zeros(k.shape[:3] + (w,), k.dtype))


def flex_attention(q: Array, k: Array, v: Array, *, raw_mod: Any, additive: bool, mask,
                   bias: Array | None, scale: float, softcap: float | None,
                   alibi: Array | None, q_offset: Any, head_mask: Array | None,
                   implementation: str = "chunked", normalizer: str = "softmax",
                   **opts: Any) -> Array:
  """Memory-efficient attention with logits ``cap(raw_mod(q.k * scale)) + bias + ALiBi``.

  ``raw_mod(s, batch, head, q_idx, kv_idx)`` is a ``score_mod`` on the scaled logits before
  soft-capping (``q_idx`` absolute, ``q_offset + i``). When nothing comes between
  (no ``softcap``) and the mod is ``additive`` (``s + term``) or there is no bias / ALiBi, the
  implementation applies bias and ALiBi natively; otherwise the score_mod applies
  soft-capping, the bias (gathered per element) and ALiBi after ``raw_mod``, in the dense
  references' order. ``implementation``: "chunked" or "pallas" (``attend``); ``opts``: its
  options (tile sizes, ...). Returns ``[B, Tq, H, Dv]``.
  """
  native = softcap is None and (additive or (bias is None and alibi is None))
  if native:
    mod = raw_mod
  else:
    def mod(s, b, h, qi, ki):
      s = common.apply_softcap(raw_mod(s, b, h, qi, ki), softcap)
      if bias is not None:
        s = s + bias_at(bias, b, h, qi - jnp.asarray(q_offset, jnp.int32), ki)
      if alibi is not None:
        s = s - alibi[b if alibi.shape[0] > 1 else 0, h].astype(jnp.float32) * jnp.abs(
            qi - ki).astype(jnp.float32)
      return s
  return attend(implementation, normalizer)(
      q, k, v, mask=mask, bias=bias if native else None, scale=scale, softcap=None,
      alibi_slopes=alibi if native else None, q_offset=q_offset, head_mask=head_mask,
      score_mod=mod, **opts)


def visible_keys_blocked(mask, tq: int, tk: int, block: int = 256) -> Array:
  """Float32 ``[B|1, Tq]``: keys each query may see (at least 1), one q block at a time
  (O(block * Tk) memory; ``selective.visible_keys`` is the dense version)."""
  if mask is None:
    return jnp.full((1, tq), float(tk), jnp.float32)
  block = min(block, tq)
  nq = -(-tq // block)
  k_pos = jnp.arange(tk)

  def row(i):
    a = mask.allowed(i * block + jnp.arange(block), k_pos)
    return jnp.sum(a.astype(jnp.float32), axis=-1)  # [B|1, block]

  n = jax.lax.map(row, jnp.arange(nq))  # [nq, B|1, block]
  n = jnp.moveaxis(n, 0, 1).reshape(n.shape[1], nq * block)[:, :tq]
  return jnp.maximum(n, 1.0)


# mechanism -> example(rng, heads, head_dim, seq) -> its keyword arguments (arrays are
# differentiated): the inputs ``python -m attnlab.bench mechanisms`` times it with.
EXAMPLES: dict[str, Any] = {}


def normal(rng: Any, *shape: int, scale: float = 0.1) -> Array:
  """Float32 ``N(0, scale^2)`` array from a numpy RandomState (for ``EXAMPLES``)."""
  return jnp.asarray(rng.standard_normal(shape) * scale, jnp.float32)


CONTRACT = ("mask", "bias", "scale", "softcap", "alibi_slopes", "q_offset", "head_mask",
            "return_weights")
CHUNKED_OPTIONS = ("block_q", "block_k")


def register_memory_efficient(mechanism: str, fn: Any, hyperparameters: tuple[str, ...],
                              normalizer: str = "softmax", example: Any = None) -> None:
  """Register ``fn(q, k, v, *, <contract>, <hyperparameters>, implementation, **options)`` as
  the mechanism's "chunked" and "pallas" implementations (score_mod on the chunked path /
  traced into the flash kernels).

  "chunked" takes ``block_q`` / ``block_k``; "pallas" the kernel options, and is chosen by
  "auto" on GPU / TPU only; its ``supports`` is the softmax (sigmoid) kernel's on the call
  without the hyperparameters. Both refuse forward-mode autodiff (custom_vjp). ``example``:
  see ``EXAMPLES``.
  """
  EXAMPLES[mechanism] = example or (lambda rng, h, d, t: {})
  from attnlab.core import chunked  # pylint: disable=g-import-not-at-top
  from attnlab.core import registry  # pylint: disable=g-import-not-at-top

  def chunked_impl(q, k, v, **kwargs):
    return fn(q, k, v, implementation="chunked", **kwargs)

  def pallas_impl(q, k, v, **kwargs):
    return fn(q, k, v, implementation="pallas", **kwargs)

  for impl in (chunked_impl, pallas_impl):
    impl.__doc__ = fn.__doc__

  def supports_chunked(**call):
    extra = set(call) - {"q", "k", "v"} - set(CONTRACT) - set(hyperparameters) - set(
        CHUNKED_OPTIONS)
    if extra:
      return f"unexpected arguments {sorted(extra)}"
    return chunked.forward_mode_reason({n: x for n, x in call.items() if n != "head_mask"})

  def supports_pallas(**call):
    from attnlab.core import api  # pylint: disable=g-import-not-at-top
    api.load_plugins()
    base = registry.get_mechanism(normalizer).implementations.get("pallas")
    if base is None:
      return "attnlab.kernels failed to import"
    rest = {n: x for n, x in call.items() if n not in hyperparameters}
    reason = base.supports(score_mod=lambda s, *_: s, **rest)
    if reason is None:
      return chunked.forward_mode_reason(
          {n: call[n] for n in hyperparameters if n in call})
    return reason

  registry.register_implementation(mechanism, "chunked", chunked_impl,
                                   supports=supports_chunked)
  registry.register_implementation(mechanism, "pallas", pallas_impl, supports=supports_pallas,
                                   auto_platforms=("gpu", "tpu"))
  entry = registry.get_mechanism(mechanism)
  if entry.kernel == "-":  # the catalogue's "fused kernel" column
    entry.kernel = f"pallas ({normalizer} + score_mod)"


def with_weights(out: Array, dense_fn: Any, q: Array, k: Array, v: Array, return_weights: bool,
                 **kwargs: Any):
  """``out`` or ``(out, weights)`` with the weights recomputed by the dense reference."""
  if not return_weights:
    return out
  return out, dense_fn(q, k, v, return_weights=True, **kwargs)[1]
