"""Deconstructing Attention -- "Approximate": softmax replaced by its Taylor expansion.

Paper: "Deconstructing Attention: Investigating Design Principles for Effective Language Modeling"
(Xue, Moosavi & Aletras, arXiv 2510.11602), Eq. 6 (after Based, arXiv 2402.18668):
``A_ij = f(s_ij) / sum_j' f(s_ij')``, ``f(s) = 1 + s + s^2 / 2``, ``s = q_i.k_j / sqrt(d)``.
``f > 0`` everywhere (its minimum is 1/2), so the weights are a proper distribution.
A plain ``attnlab.nn.MultiHeadAttention(mechanism=...)`` runs it (no parameters of its own).

Two implementations with the same numbers: "xla" (dense, any mask, the reference) and
"linear": ``f(q.k s) = phi(q).phi(k)`` with the Taylor feature map
(``attnlab.core.linear.feature_maps.taylor``, ``1 + D + D^2`` features), run through the
linear-attention core (chunked, O(T D^2 (D + Dv)) time, no T^2 term) for calls whose mask is
made of causal (no offset), valid-length and full masks, without bias / softcap / ALiBi /
weights / q_offset. "auto" keeps choosing "xla" ("linear" is not in the automatic order).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Float

from attnlab.core import common
from attnlab.core import masks as masks_lib
from attnlab.core import registry
from attnlab.core.linear import feature_maps, linear_attention
from attnlab.core.mechanisms import _scores
from attnlab.core.mechanisms import softmax as softmax_lib

Array = jax.Array

def taylor_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                     v: Float[Array, "B Tk K Dv"], *, mask: masks_lib.Mask | None = None,
                     bias: Array | None = None, scale: float | None = None,
                     softcap: float | None = None, alibi_slopes: Array | None = None,
                     q_offset: Any = 0, head_mask: Array | None = None,
                     return_weights: bool = False):
  """"Approximate" attention: second-order Taylor softmax (Eq. 6), dense reference.

  ``s`` are the usual logits (scale, soft-capping, bias and ALiBi as ``softmax_attention``);
  ``A = f(s) / sum_visible f(s)``, ``f(s) = 1 + s + s^2/2``; masked keys get 0 and a row with
  no visible key returns zeros.

  Departure: the paper (after Based) evaluates this in its linear-time recurrent feature-map
  form; this is the equal O(T^2) dense form (identical weights), the reference to test a
  linear-time implementation against.
  """
  mask, bias, scale, alibi, head_mask = softmax_lib.prepare(q, k, v, mask, bias, scale,
                                                            alibi_slopes, head_mask)
  s = common.dense_logits(q, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                          q_offset=q_offset)
  f = 1.0 + s + 0.5 * s * s
  allowed = softmax_lib.dense_mask(mask, q.shape[1], k.shape[1])
  if allowed is not None:
    f = jnp.where(allowed, f, 0.0)
  denom = jnp.sum(f, axis=-1, keepdims=True)
  weights = f / jnp.where(denom == 0.0, 1.0, denom)
  out = common.apply_head_mask(common.weighted_values(weights, v), head_mask).astype(q.dtype)
  return (out, weights) if return_weights else out


def taylor_flex(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                v: Float[Array, "B Tk K Dv"], *, mask: masks_lib.Mask | None = None,
                bias: Array | None = None, scale: float | None = None,
                softcap: float | None = None, alibi_slopes: Array | None = None,
                q_offset: Any = 0, head_mask: Array | None = None,
                return_weights: bool = False, implementation: str = "chunked", **opts: Any):
  """``taylor_attention`` in O(T) memory: since ``f(s) >= 1/2 > 0``,
  ``f(s) / sum f = softmax(log f(s))``, i.e. softmax ("chunked" or "pallas") with the
  score_mod ``log(1 + s + s^2 / 2)``."""
  out = _scores.attend(implementation)(
      q, k, v, mask=mask, bias=bias, scale=scale, softcap=softcap, alibi_slopes=alibi_slopes,
      q_offset=q_offset, head_mask=head_mask,
      score_mod=lambda s, *_: jnp.log(1.0 + s + 0.5 * s * s), **opts)
  if not return_weights:
    return out
  return out, taylor_attention(q, k, v, mask=mask, bias=bias, scale=scale, softcap=softcap,
                               alibi_slopes=alibi_slopes, q_offset=q_offset,
                               return_weights=True)[1]


def _mask_parts(mask: Any) -> tuple[bool, list[Any]] | str:
  """``(causal, valid-length masks)`` of an ``And`` of causal / full / valid-length masks,
  else the reason the linear form cannot express it."""
  leaves, todo = [], [mask]
  while todo:
    m = todo.pop()
    if isinstance(m, masks_lib.And):
      todo += [m.a, m.b]
    elif m is not None:
      leaves.append(m)
  causal, lengths = False, []
  for m in leaves:
    if isinstance(m, masks_lib.FullMask):
      continue
    if isinstance(m, masks_lib.ValidLengthMask):
      lengths.append(m)
    elif (isinstance(m, masks_lib.LocalMask) and m.left is None and m.right == 0
          and isinstance(m.q_offset, int) and m.q_offset == 0):
      causal = True
    else:
      return (f"only causal (no offset), valid-length and full masks, got "
              f"{type(m).__name__}")
  return causal, lengths


def linear_unsupported(q=None, k=None, v=None, mask=None, bias=None, scale=None, softcap=None,
                       alibi_slopes=None, q_offset=0, head_mask=None, return_weights=False,
                       chunk_size=64, **extra) -> str | None:
  """Why the "linear" implementation refuses a call (None: supported)."""
  if extra:
    return f"unexpected arguments {sorted(extra)}"
  if bias is not None or softcap is not None or alibi_slopes is not None:
    return "bias, softcap and ALiBi have no feature-map form"
  if return_weights:
    return "return_weights (the linear form never builds the weights)"
  if not isinstance(q_offset, int) or q_offset != 0:
    return "q_offset (decoding) is not supported"
  parts = _mask_parts(mask)
  return parts if isinstance(parts, str) else None


def taylor_linear_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                            v: Float[Array, "B Tk K Dv"], *,
                            mask: masks_lib.Mask | None = None, bias: Array | None = None,
                            scale: float | None = None, softcap: float | None = None,
                            alibi_slopes: Array | None = None, q_offset: Any = 0,
                            head_mask: Array | None = None, return_weights: bool = False,
                            chunk_size: int = 64):
  """"Approximate" attention in its linear-time form: normalised linear attention with
  ``phi`` the second-order Taylor map, equal to ``taylor_attention`` (see the module
  docstring for the calls it takes). kv heads are repeated for GQA (a state per q head)."""
  reason = linear_unsupported(q=q, k=k, v=v, mask=mask, bias=bias, softcap=softcap,
                              alibi_slopes=alibi_slopes, q_offset=q_offset,
                              return_weights=return_weights)
  if reason:
    raise ValueError(f"decon_approx 'linear': {reason}")
  b, tq, tk, h, kh, d = common.check_qkv(q, k, v)
  mask = common.check_mask(mask, b)
  head_mask = common.check_head_vector(head_mask, "head_mask", b, h)
  scale = common.default_scale(d, scale)
  causal, lengths = _mask_parts(mask)
  if h != kh:
    k, v = jnp.repeat(k, h // kh, axis=2), jnp.repeat(v, h // kh, axis=2)
  fq, fk = feature_maps.taylor(q, scale), feature_maps.taylor(k, scale)
  q_ok = jnp.ones((1, tq), jnp.bool_)
  for m in lengths:  # a removed key has phi(k) = 0; a removed query row is zero
    if m.kv_lengths is not None:
      fk = fk * (jnp.arange(tk)[None, :] < jnp.asarray(m.kv_lengths)[:, None])[..., None, None]
    if m.q_lengths is not None:
      q_ok = q_ok & (jnp.arange(tq)[None, :] < jnp.asarray(m.q_lengths)[:, None])
  v = jnp.asarray(v, jnp.float32)
  if causal:  # top-left aligned: query i sees keys 0..i, so only the first Tq keys matter
    fk, v = fk[:, :tq], v[:, :tq]
    if tk < tq:
      pad = ((0, 0), (0, tq - tk), (0, 0), (0, 0))
      fk, v = jnp.pad(fk, pad), jnp.pad(v, pad)
    out = linear_attention(fq, fk, v, normalize=True, eps=0.0, causal=True,
                           chunk_size=chunk_size)
  else:  # Tq may differ from Tk: one global state
    num = jnp.einsum("bthf,bthv->bhfv", fk, jnp.asarray(v, jnp.float32))
    den = jnp.sum(fk, axis=1)
    den = jnp.einsum("bqhf,bhf->bqh", fq, den)[..., None]
    out = jnp.einsum("bqhf,bhfv->bqhv", fq, num) / jnp.where(den == 0.0, 1.0, den)
  out = jnp.where(q_ok[:, :, None, None], out, 0.0)
  return common.apply_head_mask(out, head_mask).astype(q.dtype)


registry.register_mechanism(
    'decon_approx', kind='attention',
    paper='Deconstructing Attention: Investigating Design Principles for Effective Language '
          'Modeling (arXiv 2510.11602) -- Approximate (2nd-order Taylor softmax, after '
          'Based)',
    description='A = f(q.k/sqrt(d)) / sum f, f(s) = 1 + s + s^2/2',
    complexity='O(T^2 d) time, O(T d) memory (chunked: softmax of log f); linear-time '
               'recurrent form exists',
    implementations={"xla": taylor_attention})
registry.register_implementation('decon_approx', 'linear', taylor_linear_attention,
                                 supports=linear_unsupported)
_scores.register_memory_efficient("decon_approx", taylor_flex, ())
