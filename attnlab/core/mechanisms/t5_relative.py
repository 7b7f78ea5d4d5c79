"""T5 relative position buckets: a learned scalar per (bucket of key - query distance, head).

Paper: "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer"
(Raffel et al., arXiv 1910.10683), Sec. 2.1 "Position embeddings"::

    w_ij = softmax_j(q_i . k_j * scale + b[bucket(j - i), h] + bias_ij),   out_i = sum_j w_ij v_j

``bucket`` is T5's ``_relative_position_bucket``: with ``bidirectional`` half of the
``num_buckets`` buckets are for keys after the query; in each half, distances below
``max_exact = n // 2`` (``n`` the buckets of the half) get a bucket each, larger ones share
logarithmically spaced buckets up to ``max_distance``, beyond which all share the last bucket.
``rel_bias [num_buckets, H]`` is the learned table (``attnlab.nn.mechanisms.t5_relative``).
Query ``i`` sits at ``q_offset + i``.

Departures: the default ``scale`` is ``1/sqrt(D)`` (T5 folds it into the initialisation of
``W_q``; pass ``scale=1.0`` for T5's form); the table is per layer (T5 shares one across the
layers of a stack). The "chunked" implementation adds the table with a score_mod (O(T) memory).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Float

from attnlab.core import common
from attnlab.core import registry
from attnlab.core.mechanisms import _scores

Array = jax.Array


def relative_bucket(rel: Array, *, bidirectional: bool = True, num_buckets: int = 32,
                    max_distance: int = 128) -> Array:
  """T5's bucket (int32, in ``[0, num_buckets)``) of ``rel = key_pos - query_pos``,
  elementwise."""
  rel = jnp.asarray(rel, jnp.int32)
  out = jnp.zeros_like(rel)
  if bidirectional:
    num_buckets //= 2
    out = out + (rel > 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(rel)
  else:
    n = -jnp.minimum(rel, 0)
  max_exact = num_buckets // 2
  large = max_exact + (jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
                       / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return out + jnp.where(n < max_exact, n, large)


def _check(q, rel_bias, num_buckets, bidirectional, max_distance):
  if not isinstance(num_buckets, int) or num_buckets < (4 if bidirectional else 2):
    raise ValueError(f"num_buckets must be an int >= {4 if bidirectional else 2}, got "
                     f"{num_buckets!r}")
  exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
  if not isinstance(max_distance, int) or max_distance <= exact:
    raise ValueError(f"max_distance must be an int > {exact} (the exact buckets), got "
                     f"{max_distance!r}")
  h = q.shape[2]
  if rel_bias is not None and jnp.shape(rel_bias) != (num_buckets, h):
    raise ValueError(f"rel_bias must have shape [num_buckets, heads]={(num_buckets, h)}, got "
                     f"{jnp.shape(rel_bias)}")


def t5_relative_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                          v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                          scale: float | None = None, softcap: float | None = None,
                          alibi_slopes: Array | None = None, q_offset: Any = 0,
                          head_mask: Array | None = None, return_weights: bool = False,
                          rel_bias: Array | None = None, num_buckets: int = 32,
                          max_distance: int = 128, bidirectional: bool = True):
  """T5 relative attention, dense reference; q ``[B,Tq,H,D]``, k/v ``[B,Tk,K,D]``.

  ``rel_bias``: ``[num_buckets, H]`` (None: softmax attention). The table entry is added after
  soft-capping, with the additive ``bias`` and ALiBi.
  """
  _check(q, rel_bias, num_buckets, bidirectional, max_distance)
  mask, bias, scale, alibi, head_mask = _scores.prepare(q, k, v, mask, bias, scale,
                                                        alibi_slopes, head_mask)
  logits = common.dense_logits(q, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                               q_offset=q_offset)
  if rel_bias is not None:
    q_pos, k_pos = _scores.positions(q.shape[1], k.shape[1], q_offset)
    idx = relative_bucket(k_pos[None, :] - q_pos[:, None], bidirectional=bidirectional,
                          num_buckets=num_buckets, max_distance=max_distance)  # [Tq, Tk]
    logits = logits + jnp.transpose(rel_bias.astype(jnp.float32)[idx], (2, 0, 1))[None]
  return _scores.softmax_output(logits, v, mask, head_mask, q.dtype, return_weights)


def t5_score_mod(rel_bias: Array, *, bidirectional: bool = True, num_buckets: int = 32,
                 max_distance: int = 128):
  """The T5 table as a ``score_mod``: ``s + rel_bias[bucket(kv_idx - q_idx), head]``."""
  table = jnp.asarray(rel_bias, jnp.float32)

  def mod(s, b, h, q_idx, kv_idx):
    del b
    return s + table[relative_bucket(kv_idx - q_idx, bidirectional=bidirectional,
                                     num_buckets=num_buckets, max_distance=max_distance), h]
  return mod


def t5_relative_flex(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                     v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                     scale: float | None = None, softcap: float | None = None,
                     alibi_slopes: Array | None = None, q_offset: Any = 0,
                     head_mask: Array | None = None, return_weights: bool = False,
                     rel_bias: Array | None = None, num_buckets: int = 32,
                     max_distance: int = 128, bidirectional: bool = True,
                     implementation: str = "chunked", **opts: Any):
  """``t5_relative_attention`` in O(T) memory: softmax ("chunked" or "pallas") with
  ``t5_score_mod``."""
  _check(q, rel_bias, num_buckets, bidirectional, max_distance)
  mod = None if rel_bias is None else t5_score_mod(
      rel_bias, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
  kw = dict(mask=mask, bias=bias, scale=scale, softcap=softcap, alibi_slopes=alibi_slopes,
            q_offset=q_offset)
  out = _scores.attend(implementation)(q, k, v, head_mask=head_mask, score_mod=mod, **kw,
                                       **opts)
  return _scores.with_weights(out, t5_relative_attention, q, k, v, return_weights,
                              rel_bias=rel_bias, num_buckets=num_buckets,
                              max_distance=max_distance, bidirectional=bidirectional, **kw)


registry.register_mechanism(
    "t5_relative", kind="module",
    paper="Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer "
          "(arXiv 1910.10683)",
    description="softmax(q k^T * scale + b[bucket(j - i), h]) v, learned scalar per "
                "log-spaced relative-distance bucket and head",
    complexity="O(T^2 d) time, O(T d) memory (chunked)",
    implementations={"xla": t5_relative_attention})
_scores.register_memory_efficient(
    "t5_relative", t5_relative_flex,
    ("rel_bias", "num_buckets", "max_distance", "bidirectional"),
    example=lambda rng, h, d, t: dict(rel_bias=_scores.normal(rng, 32, h), num_buckets=32,
                                      max_distance=128, bidirectional=False))
