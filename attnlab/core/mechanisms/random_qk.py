"""Random-feature attention: frozen random query-key matrices, trainable values.

Paper: "What can a Single Attention Layer Learn? A Study Through the Random Features Lens"
(Fu, Guo, Bai, Mei; NeurIPS 2023, arXiv 2307.11353). Each head ``h`` scores a query token
``x_i`` against a key token ``x_j`` through a random matrix ``W_h`` (the product of the query
and key matrices) that is sampled once and never trained; only the values (and here the output
projection) learn::

    w_ij = softmax_j( x_i^T W_h x_j * scale + bias_ij ),   out_i = sum_j w_ij v_j

This function takes the general bilinear form ``q_i^T W_h k_j`` (``qk_matrix [H, Dq, Dk]``;
omitted: identity, i.e. softmax attention). ``W_h`` ~ ``mu I + N(0, 1/E)`` entrywise is built
by ``attnlab.nn.mechanisms.random_qk.RandomQKAttention`` (``mu = 0``: zero mean; ``mu != 0``: the
paper's non-zero-mean sampling, to our reading centred on the identity). Departures: softmax
over keys (the paper's analysis also covers other normalisations), one frozen matrix per head
of a standard multi-head layer rather than very many heads, ``scale = 1/sqrt(Dk)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Float

from attnlab.core import common
from attnlab.core.mechanisms import _scores
from attnlab.core import registry

Array = jax.Array


def random_qk_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                        v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                        scale: float | None = None, softcap: float | None = None,
                        alibi_slopes: Array | None = None, q_offset: Any = 0,
                        head_mask: Array | None = None, return_weights: bool = False,
                        qk_matrix: Array | None = None):
  """Bilinear-score attention ``q_i^T W_h k_j``; q ``[B,Tq,H,D]``, k/v ``[B,Tk,K,D]``.

  ``qk_matrix``: ``[H, D, D]`` (treated as a constant: no gradient flows into it).
  """
  mask, bias, scale, alibi, head_mask = _scores.prepare(q, k, v, mask, bias, scale,
                                                        alibi_slopes, head_mask)
  h, d = q.shape[2], q.shape[3]
  if qk_matrix is not None:
    if qk_matrix.shape != (h, d, d):
      raise ValueError(f"qk_matrix must have shape [heads, head_dim, head_dim]={(h, d, d)}, "
                       f"got {qk_matrix.shape}")
    w = jax.lax.stop_gradient(qk_matrix.astype(jnp.float32))
    q = jnp.einsum("bthd,hde->bthe", q.astype(jnp.float32), w).astype(q.dtype)
  logits = common.dense_logits(q, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                               q_offset=q_offset)
  return _scores.softmax_output(logits, v, mask, head_mask, q.dtype, return_weights)


registry.register_mechanism(
    'random_qk', kind='module',
    paper='What can a Single Attention Layer Learn? A Study Through the Random Features '
          'Lens (arXiv 2307.11353)',
    description='softmax(x_i^T W_h x_j / sqrt(E)) v, W_h frozen random (mean qk_mean * I), values '
                'trained',
    complexity='O(T^2 E + T E^2) time per head, O(T^2) memory (E = d_model)',
    implementations={"xla": random_qk_attention})
