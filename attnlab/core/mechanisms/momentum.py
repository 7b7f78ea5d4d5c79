"""Momentum-based attention: softmax attention plus an exponential moving sum of past values.

Paper: "Why Can GPT Learn In-Context? Language Models Implicitly Perform Gradient Descent as
Meta-Optimizers" (Dai et al., arXiv 2212.10559), Sec. "Momentum-Based Attention": by analogy
with momentum SGD, attention values are meta-gradients, and the paper adds their exponential
moving average to the attention output (our reading of its equation)::

    MoAttn(V, K, q_t) = Attn(V, K, q_t) + EMA(V) = V softmax(K^T q_t / sqrt(d)) +
                        sum_{i=1}^{t-1} eta^{t-i} v_i

Here ``out_t = attn_t + eta * sum_{i < t} momentum^{t - i} v_i`` (``include_current=True``: the
sum runs over ``i <= t``, adding ``v_t``). The paper's form is ``eta = 1`` with decay
``momentum`` (the paper's eta). Positions are absolute (query ``q_offset + t``, key ``i``); the
mask (segments, cache validity, windows) also filters the EMA, and future keys are never
added, so a non-causal mask still gives a past-only EMA. ``return_weights`` returns the softmax
weights (the EMA term is not a weight over keys that sums to one).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Float

from attnlab.core import common
from attnlab.core.mechanisms import softmax as softmax_lib
from attnlab.core.mechanisms import _scores
from attnlab.core import registry

Array = jax.Array


def ema_weights(q_pos: Array, k_pos: Array, momentum: Any, include_current: bool) -> Array:
  """``momentum^(t - i)`` for ``i < t`` (or ``<=``), else 0: float32 ``[Tq, Tk]``."""
  lag = (q_pos[:, None] - k_pos[None, :]).astype(jnp.float32)
  keep = lag >= 0 if include_current else lag > 0
  m = jnp.asarray(momentum, jnp.float32)
  return jnp.where(keep, m ** jnp.where(keep, lag, 0.0), 0.0)


def momentum_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                       v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                       scale: float | None = None, softcap: float | None = None,
                       alibi_slopes: Array | None = None, q_offset: Any = 0,
                       head_mask: Array | None = None, return_weights: bool = False,
                       momentum: float = 0.9, eta: float = 1.0, include_current: bool = False):
  """Softmax attention + ``eta`` x EMA of past values; shapes as ``softmax_attention``."""
  mask, bias, scale, alibi, head_mask = _scores.prepare(q, k, v, mask, bias, scale,
                                                        alibi_slopes, head_mask)
  tq, tk = q.shape[1], k.shape[1]
  allowed = softmax_lib.dense_mask(mask, tq, tk)
  logits = common.dense_logits(q, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                               q_offset=q_offset)
  weights = softmax_lib.masked_softmax(logits, allowed)
  q_pos, k_pos = _scores.positions(tq, tk, q_offset)
  decay = ema_weights(q_pos, k_pos, momentum, include_current)[None, None]  # [1,1,Tq,Tk]
  if allowed is not None:
    decay = jnp.where(allowed, decay, 0.0)
  total = weights + jnp.asarray(eta, jnp.float32) * decay  # [B, H, Tq, Tk]
  out = common.apply_head_mask(common.weighted_values(total, v), head_mask).astype(q.dtype)
  return (out, weights) if return_weights else out


registry.register_mechanism(
    'momentum_ema', kind='attention',
    paper='Why Can GPT Learn In-Context? Language Models Implicitly Perform Gradient '
          'Descent as Meta-Optimizers (arXiv 2212.10559)',
    description='softmax attention + eta * sum_{i<t} momentum^(t-i) v_i',
    complexity='O(T^2 d) time, O(T^2) memory (dense reference)',
    implementations={"xla": momentum_attention})
