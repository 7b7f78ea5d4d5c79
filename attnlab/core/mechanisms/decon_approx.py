"""Deconstructing Attention -- "Approximate": softmax replaced by its Taylor expansion.

Paper: "Deconstructing Attention: Investigating Design Principles for Effective Language Modeling"
(Xue, Moosavi & Aletras, arXiv 2510.11602), Eq. 6 (after Based, arXiv 2402.18668):
``A_ij = f(s_ij) / sum_j' f(s_ij')``, ``f(s) = 1 + s + s^2 / 2``, ``s = q_i.k_j / sqrt(d)``.
``f > 0`` everywhere (its minimum is 1/2), so the weights are a proper distribution.
A plain ``attnlab.nn.MultiHeadAttention(mechanism=...)`` runs it (no parameters of its own).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Float

from attnlab.core import common
from attnlab.core import masks as masks_lib
from attnlab.core import registry
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


registry.register_mechanism(
    'decon_approx', kind='attention',
    paper='Deconstructing Attention: Investigating Design Principles for Effective Language '
          'Modeling (arXiv 2510.11602) -- Approximate (2nd-order Taylor softmax, after '
          'Based)',
    description='A = f(q.k/sqrt(d)) / sum f, f(s) = 1 + s + s^2/2',
    complexity='O(T^2 d) time, O(T^2) memory (dense reference); linear-time recurrent form exists',
    implementations={"xla": taylor_attention})
