"""Shape checks and the score pieces shared by every dense-score mechanism.

Layout (as ``jax.nn.dot_product_attention``): ``q [B, Tq, H, D]``, ``k [B, Tk, K, D]``,
``v [B, Tk, K, Dv]`` with ``H % K == 0`` (MHA when K == H, GQA when 1 < K < H, MQA when K == 1).
Query head ``h`` reads key/value head ``h // (H // K)``. Logits are ``[B, H, Tq, Tk]``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, Int

from attnlab.core import masks as masks_lib

Array = jax.Array


def check_qkv(q: Any, k: Any, v: Any) -> tuple[int, int, int, int, int, int]:
  """Validate shapes; return (batch, q_len, kv_len, heads, kv_heads, head_dim)."""
  for name, x in (("q", q), ("k", k), ("v", v)):
    if not hasattr(x, "shape") or len(x.shape) != 4:
      shape = getattr(x, "shape", type(x).__name__)
      raise ValueError(f"{name} must have shape [batch, length, heads, head_dim], got {shape}")
  b, tq, h, d = q.shape
  bk, tk, kh, dk = k.shape
  bv, tv, vh, _ = v.shape
  if bk != b or bv != b:
    raise ValueError(f"q, k, v must share the batch size, got q {q.shape}, k {k.shape}, "
                     f"v {v.shape}")
  if dk != d:
    raise ValueError(f"k head_dim must equal q head_dim {d}, got k shape {k.shape}")
  if tv != tk or vh != kh:
    raise ValueError(f"v must have k's length and heads {(tk, kh)}, got v shape {v.shape}")
  if kh == 0 or h % kh:
    raise ValueError(f"q heads ({h}) must be a multiple of k/v heads ({kh}); q {q.shape}, "
                     f"k {k.shape}")
  return b, tq, tk, h, kh, d


def default_scale(head_dim: int, scale: float | None) -> float:
  return 1.0 / math.sqrt(head_dim) if scale is None else scale


def check_bias(bias: Any, b: int, h: int, tq: int,
               tk: int) -> Float[Array, "#B #H #Tq #Tk"] | None:
  """``bias`` must broadcast to ``[B, H, Tq, Tk]`` (numpy rules: ``[Tq, Tk]``, ``[H, Tq, Tk]``
  and size-1 dims work); returned 4-d."""
  if bias is None:
    return None
  bias = jnp.asarray(bias)
  target = (b, h, tq, tk)
  if 1 <= bias.ndim < 4:
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
  if bias.ndim != 4 or any(s not in (1, t) for s, t in zip(bias.shape, target)):
    raise ValueError(f"bias must broadcast to [batch, heads, q_len, kv_len] = {target}, got "
                     f"shape {jnp.shape(bias)}")
  return bias


def check_head_vector(x: Any, name: str, b: int, h: int) -> Float[Array, "#B H"] | None:
  """Per-head values ``[H]`` or ``[B, H]`` (head masks, ALiBi slopes)."""
  if x is None:
    return None
  x = jnp.asarray(x)
  if x.shape not in ((h,), (b, h), (1, h)):
    raise ValueError(f"{name} must have shape [heads]={(h,)} or [batch, heads]={(b, h)}, got "
                     f"{x.shape}")
  return x if x.ndim == 2 else x[None]


def check_mask(mask: Any, b: int, q_len: int | None = None,
               kv_len: int | None = None) -> masks_lib.Mask | None:
  """``mask`` must be a ``Mask`` whose batch fits ``b``; with ``q_len`` and ``kv_len`` its
  arrays (segment ids, lengths, dense arrays; through And/Or) must fit the call's shapes."""
  if mask is None:
    return None
  if not isinstance(mask, masks_lib.Mask):
    raise TypeError("mask must be an attnlab.masks.Mask value (e.g. masks.CausalMask()), got "
                    f"{type(mask).__name__}; wrap a dense boolean array with masks.ArrayMask")
  mb = mask.batch_size
  if mb is not None and mb not in (1, b):
    raise ValueError(f"mask batch size {mb} does not match q batch size {b}")
  if q_len is not None and kv_len is not None:
    mask.check_shape(b, q_len, kv_len)
  return mask


def build_mask(mask: masks_lib.Mask | None, is_causal: bool, q_offset: Any = 0):
  """Combine an explicit mask with ``is_causal``, both at the call's ``q_offset``.

  Position-dependent masks built with ``q_offset=0`` follow ``q_offset``; one built with a
  different non-zero offset raises ValueError (see ``Mask.align_q_offset``).
  """
  if mask is not None:
    mask = mask.align_q_offset(q_offset)
  causal = masks_lib.CausalMask(q_offset) if is_causal else None
  return masks_lib.combine(mask, causal)


def alibi_slopes(num_heads: int) -> Float[np.ndarray, "H"]:
  """Geometric ALiBi slopes from "Train Short, Test Long" (arXiv 2108.12409), ``[H]``.

  For a power of two n the slopes are 2^(-8i/n), i = 1..n; otherwise the paper's recipe
  interleaves the slopes of the next power of two.
  """

  def pow2(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]

  if num_heads & (num_heads - 1) == 0:
    return np.asarray(pow2(num_heads), np.float32)
  closest = 2 ** math.floor(math.log2(num_heads))
  extra = pow2(2 * closest)[0::2][: num_heads - closest]
  return np.asarray(pow2(closest) + extra, np.float32)


def alibi_bias(slopes: Float[Array, "#B H"], q_pos: Int[Array, "Tq"],
               k_pos: Int[Array, "Tk"]) -> Float[Array, "#B H Tq Tk"]:
  """``-slope * |q_pos - k_pos|`` as ``[B|1, H, len(q_pos), len(k_pos)]`` float32.

  For causal attention (k <= q) this is the paper's ``slope * (k - q)``.
  """
  dist = jnp.abs(q_pos[:, None] - k_pos[None, :]).astype(jnp.float32)
  return -slopes.astype(jnp.float32)[:, :, None, None] * dist


def apply_softcap(logits: Float[Array, "*shape"],
                  softcap: float | None) -> Float[Array, "*shape"]:
  if softcap is None:
    return logits
  return softcap * jnp.tanh(logits / softcap)


def dense_logits(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"], *, scale: float,
                 bias: Float[Array, "#B #H #Tq #Tk"] | None = None,
                 softcap: float | None = None, alibi: Float[Array, "#B H"] | None = None,
                 q_offset: Any = 0) -> Float[Array, "B H Tq Tk"]:
  """Float32 logits ``[B, H, Tq, Tk]``: ``cap(q.k * scale) + bias + alibi``.

  Order: scale, then soft-capping ``cap * tanh(x / cap)`` (as Gemma 2), then the additive
  bias and ALiBi. GQA is computed grouped, without repeating k.
  """
  b, tq, h, d = q.shape
  kh = k.shape[2]
  g = h // kh
  qg = q.reshape(b, tq, kh, g, d)
  s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
  s = s.reshape(b, h, tq, k.shape[1]) * jnp.float32(scale)
  s = apply_softcap(s, softcap)
  if bias is not None:
    s = s + bias.astype(jnp.float32)
  if alibi is not None:
    q_pos = jnp.arange(tq) + q_offset
    s = s + alibi_bias(alibi, q_pos, jnp.arange(k.shape[1]))
  return s


def check_score_mod(score_mod: Any) -> None:
  """``score_mod`` must be None or callable ``(score, batch, head, q_idx, kv_idx) -> score``."""
  if score_mod is not None and not callable(score_mod):
    raise TypeError(f"score_mod must be None or callable(score, batch, head, q_idx, kv_idx) -> "
                    f"score, got {type(score_mod).__name__}")


def score_mod_indices(b: int, h: int, q_pos: Array, k_pos: Array) -> tuple[Array, ...]:
  """Int32 ``batch [b,1,1,1]``, ``head [1,h,1,1]``, ``q_idx [1,1,n,1]``, ``kv_idx [1,1,1,m]``
  for a score block ``[b, h, n, m]`` (the arguments a ``score_mod`` receives)."""
  return (jnp.arange(b, dtype=jnp.int32).reshape(b, 1, 1, 1),
          jnp.arange(h, dtype=jnp.int32).reshape(1, h, 1, 1),
          jnp.asarray(q_pos, jnp.int32).reshape(1, 1, -1, 1),
          jnp.asarray(k_pos, jnp.int32).reshape(1, 1, 1, -1))


def call_score_mod(score_mod: Any, s: Float[Array, "B H N M"], idx: tuple[Array, ...],
                   *consts: Any) -> Float[Array, "B H N M"]:
  """``score_mod(s, *idx, *consts)`` checked and broadcast to ``s``'s shape, float32."""
  out = jnp.asarray(score_mod(s, *idx, *consts))
  if not jnp.issubdtype(out.dtype, jnp.inexact):
    raise TypeError(f"score_mod must return floating-point scores, got dtype {out.dtype} "
                    "(a boolean mask belongs in mask=, e.g. masks.FunctionMask)")
  try:
    out = jnp.broadcast_to(out, s.shape)
  except ValueError:
    raise ValueError(f"score_mod must return an array broadcastable to the score block "
                     f"{s.shape}, got shape {out.shape}") from None
  return out.astype(jnp.float32)


def hoist_constants(fn: Any, *example_args: Any) -> tuple[Any, tuple]:
  """``fn`` traced at ``example_args`` with *every* array it closes over hoisted out.

  Returns ``(g, consts)`` with ``g(*args, *consts) == fn(*args)`` for arguments of the example
  shapes. Unlike ``jax.closure_convert`` (which hoists only the differentiable ones), integer
  and boolean tracers (document ids, lengths) are hoisted too, so ``g`` closes over no tracer
  and may be passed as static data into a custom_vjp or a kernel under any outer transform.
  """
  closed = jax.make_jaxpr(fn)(*example_args)
  return HoistedFn(closed.jaxpr, len(jax.tree.leaves(example_args))), tuple(closed.consts)


class HoistedFn:
  """``fn(*args, *consts)`` evaluating ``jaxpr`` (its constvars are the hoisted ``consts``);
  the kernels read ``jaxpr`` to index captured arrays in place (``kernels.flash.ref_reads``).
  """

  def __init__(self, jaxpr: Any, n_args: int):
    self.jaxpr, self.n_args = jaxpr, n_args

  def __call__(self, *args_and_consts: Any) -> Any:
    args, consts = args_and_consts[:self.n_args], args_and_consts[self.n_args:]
    return jax.core.eval_jaxpr(self.jaxpr, list(consts), *args)[0]


def apply_score_mod(score_mod: Any, s: Float[Array, "B H Tq Tk"],
                    q_offset: Any = 0) -> Float[Array, "B H Tq Tk"]:
  """Dense ``score_mod`` over logits ``[B, H, Tq, Tk]`` (query ``i`` at ``q_offset + i``)."""
  if score_mod is None:
    return s
  b, h, tq, tk = s.shape
  q_pos = jnp.arange(tq, dtype=jnp.int32) + jnp.asarray(q_offset, jnp.int32)
  return call_score_mod(score_mod, s, score_mod_indices(b, h, q_pos, jnp.arange(tk)))


def alibi_score_mod(slopes: Any):
  """ALiBi as a ``score_mod``: ``s - slopes[head] * |q_idx - kv_idx|`` (``slopes [H]``)."""
  slopes = jnp.asarray(slopes, jnp.float32)
  if slopes.ndim != 1:
    raise ValueError(f"alibi_score_mod: slopes must have shape [H], got {slopes.shape}")
  return lambda s, b, h, q_idx, kv_idx: s - slopes[h] * jnp.abs(q_idx - kv_idx).astype(
      jnp.float32)


def softcap_score_mod(cap: float):
  """Soft-capping as a ``score_mod``: ``cap * tanh(s / cap)``."""
  return lambda s, *_: cap * jnp.tanh(s / cap)


def weighted_values(weights: Float[Array, "B H Tq Tk"],
                    v: Float[Array, "B Tk K Dv"]) -> Float[Array, "B Tq H Dv"]:
  """``weights [B, H, Tq, Tk]`` times ``v [B, Tk, K, Dv]`` -> ``[B, Tq, H, Dv]`` (grouped)."""
  b, h, tq, tk = weights.shape
  kh = v.shape[2]
  w = weights.reshape(b, kh, h // kh, tq, tk).astype(v.dtype)
  out = jnp.einsum("bhgqk,bkhd->bqhgd", w, v, preferred_element_type=jnp.float32)
  return out.reshape(b, tq, h, v.shape[-1])


def apply_head_mask(out: Float[Array, "B Tq H Dv"],
                    head_mask: Float[Array, "#B H"] | None) -> Float[Array, "B Tq H Dv"]:
  """Scale each head's output ``[B, Tq, H, Dv]`` by ``head_mask [B|1, H]``."""
  if head_mask is None:
    return out
  return out * head_mask[:, None, :, None].astype(out.dtype)
