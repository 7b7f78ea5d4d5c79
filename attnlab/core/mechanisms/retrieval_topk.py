"""RetrievalAttention-style decoding: exact top-k keys by ``q . k`` plus a local window.

Paper: "RetrievalAttention: Accelerating Long-Context LLM Inference via Vector Retrieval"
(Liu et al., arXiv 2409.10516). At each decode step a query attends (one softmax) to the
union of the ``top_k`` visible keys with the largest ``q . k`` and the ``window`` most recent
visible keys (the paper keeps a static local window of recent and initial tokens on the GPU
and retrieves the rest from a CPU vector index). ``sink`` keeps the first ``sink`` keys too.

Departures: the top-k is exact (computed from every score; the paper uses an approximate
nearest-neighbour index tuned for the query/key distribution shift) -- so this is the
accuracy ceiling of the method, not its speed; it runs for any ``Tq`` (training and prefill
too), with the call's mask (causal, cache length) deciding which keys are visible. The top-k
choice is not differentiated. ``retrieval_metrics`` reports, per query row, the recall of the
full attention's own top-k keys and the attention-mass error (the full softmax mass outside
the attended set).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Float

from attnlab.core import common
from attnlab.core import registry
from attnlab.core.mechanisms import _grid
from attnlab.core.mechanisms import _scores
from attnlab.core.mechanisms import softmax as softmax_lib

Array = jax.Array


def _check(top_k: Any, window: Any, sink: Any) -> tuple[int, int, int]:
  top_k = _grid.check_positive_int(top_k, "top_k")
  for name, val in (("window", window), ("sink", sink)):
    if isinstance(val, bool) or not isinstance(val, int) or val < 0:
      raise ValueError(f"{name} must be a non-negative int, got {val!r}")
  return top_k, window, sink


def selected_keys(raw: Array, vis: Array, q_pos: Array, k_pos: Array, top_k: int, window: int,
                  sink: int) -> Array:
  """Bool ``[B, H, Tq, Tk]``: top-k of ``raw`` among visible keys, the last ``window`` visible
  positions before the query and the first ``sink`` keys (all restricted to visible keys)."""
  kk = min(top_k, raw.shape[-1])
  ranked = jnp.where(vis, raw, -jnp.inf)
  vals, idx = jax.lax.top_k(jax.lax.stop_gradient(ranked), kk)
  top = jnp.any((idx[..., None] == jnp.arange(raw.shape[-1])) & (vals[..., None] > -jnp.inf),
                axis=-2)
  lag = q_pos[:, None] - k_pos[None, :]
  local = (lag >= 0) & (lag < window)
  first = (k_pos < sink)[None, :]
  return (top | local | first) & vis


def retrieval_topk_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                             v: Float[Array, "B Tk K Dv"], *, mask=None,
                             bias: Array | None = None, scale: float | None = None,
                             softcap: float | None = None, alibi_slopes: Array | None = None,
                             q_offset: Any = 0, head_mask: Array | None = None,
                             return_weights: bool = False, top_k: int = 8, window: int = 4,
                             sink: int = 0):
  """Softmax over the top-k keys by ``q . k`` + a local window (+ sinks); dense scores
  ``[B, H, Tq, Tk]`` (a decode step: ``Tq = 1``). Shapes as ``softmax_attention``."""
  top_k, window, sink = _check(top_k, window, sink)
  mask, bias, scale, alibi, head_mask = _scores.prepare(q, k, v, mask, bias, scale,
                                                        alibi_slopes, head_mask)
  tq, tk = q.shape[1], k.shape[1]
  logits = common.dense_logits(q, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                               q_offset=q_offset)
  vis = jnp.ones((1, 1, tq, tk), bool) if mask is None else mask.dense(tq, tk)[:, None]
  vis = vis & ~jnp.isneginf(logits)
  q_pos, k_pos = _scores.positions(tq, tk, q_offset)
  keep = selected_keys(_scores.qk_raw(q, k), vis, q_pos, k_pos, top_k, window, sink)
  weights = softmax_lib.masked_softmax(logits, keep)
  out = common.apply_head_mask(common.weighted_values(weights, v), head_mask).astype(q.dtype)
  return (out, weights) if return_weights else out


def retrieval_metrics(q: Array, k: Array, v: Array, *, mask=None, q_offset: Any = 0,
                      top_k: int = 8, window: int = 4, sink: int = 0) -> dict[str, Array]:
  """``mask`` built with ``q_offset=0`` follows ``q_offset`` (as in ``attnlab.attention``).
  Per query row (``[B, H, Tq]``), against full softmax attention under the same mask:
  ``recall`` (share of the full attention's ``top_k`` highest-weight keys -- those with
  non-zero weight -- that are attended),
  ``mass_error`` (full softmax mass on keys not attended), and ``output_error``
  (``|out - out_full| / |out_full|`` per row, ``[B, Tq, H]``)."""
  top_k, window, sink = _check(top_k, window, sink)
  tk = k.shape[1]
  mask = common.build_mask(common.check_mask(mask, q.shape[0]), False, q_offset)
  out, w = retrieval_topk_attention(q, k, v, mask=mask, q_offset=q_offset, top_k=top_k,
                                    window=window, sink=sink, return_weights=True)
  full_out, full = softmax_lib.softmax_attention(q, k, v, mask=mask, q_offset=q_offset,
                                                 return_weights=True)
  kept = w > 0
  kk = min(top_k, tk)
  _, idx = jax.lax.top_k(full, kk)
  real = jnp.take_along_axis(full, idx, axis=-1) > 0  # rows with < top_k visible keys
  hit = jnp.take_along_axis(kept, idx, axis=-1) & real
  recall = hit.sum(-1) / jnp.maximum(real.sum(-1), 1)
  mass_error = jnp.sum(jnp.where(kept, 0.0, full), axis=-1)
  err = jnp.linalg.norm(out - full_out, axis=-1) / jnp.maximum(
      jnp.linalg.norm(full_out, axis=-1), 1e-30)
  return {"recall": recall, "mass_error": mass_error, "output_error": err}


registry.register_mechanism(
    "retrieval_topk", kind="attention",
    paper="RetrievalAttention: Accelerating Long-Context LLM Inference via Vector Retrieval "
          "(arXiv 2409.10516)",
    description="softmax over the exact top-k keys by q.k plus a local window (and sinks); "
                "recall / attention-mass error vs full attention in retrieval_metrics",
    complexity="O(T_k d) per decoded token (dense scores + top-k), O(T^2) for a full pass",
    implementations={"xla": retrieval_topk_attention})
