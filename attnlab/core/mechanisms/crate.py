"""CRATE multi-head subspace self-attention (MSSA).

Papers: "White-Box Transformers via Sparse Rate Reduction" (Yu et al., NeurIPS 2023,
arXiv 2306.01129) and "Masked Completion via Structured Diffusion with White-Box Transformers"
(Pai et al., ICLR 2024, arXiv 2404.02446). One subspace basis ``U_h`` per head is used as
query, key **and** value::

    SSA(Z | U_h) = (U_h^T Z) softmax((U_h^T Z)^T (U_h^T Z) * scale)
    MSSA(Z)      = W_out [SSA(Z | U_1); ...; SSA(Z | U_H)]

In the token-major layout of this package ``w = x U`` ``[B, T, H, D]`` and
``crate_attention(w, w, w)`` is the per-head SSA (softmax over keys, ``scale = 1/sqrt(D)`` as
in the official code). ``crate_mssa(w)`` is that call. Departures: the paper's output
operator is ``(p / (N eps^2)) [U_1, ..., U_H]``; ``attnlab.nn.mechanisms.crate.CRATEAttention``
uses a separate learned output projection as the authors' code does. CRATE's ISTA block (in
place of the MLP) is not part of this mechanism. Masks (causal for a decoder) apply as usual.
"""

from __future__ import annotations

from typing import Any

import jax
from jaxtyping import Float

from attnlab.core import common
from attnlab.core.mechanisms import _scores
from attnlab.core import registry

Array = jax.Array


def crate_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                    v: Float[Array, "B Tk K Dv"], *, mask=None, bias: Array | None = None,
                    scale: float | None = None, softcap: float | None = None,
                    alibi_slopes: Array | None = None, q_offset: Any = 0,
                    head_mask: Array | None = None, return_weights: bool = False):
  """Per-head SSA. In CRATE ``q``, ``k`` and ``v`` are the same ``[B, T, H, D]`` array
  ``x U`` (with a KV cache, k = v = the cached ``x U`` and q its last rows). Checked on shapes
  only: k and v identical shapes, q with their heads and width (the math is softmax
  attention)."""
  if k.shape != v.shape or q.shape[2:] != k.shape[2:] or q.shape[0] != k.shape[0]:
    raise ValueError("crate attention uses one projection as query, key and value: k and v must "
                     "have the same shape and q the same batch, heads and head_dim, got q "
                     f"{q.shape}, k {k.shape}, v {v.shape}")
  mask, bias, scale, alibi, head_mask = _scores.prepare(q, k, v, mask, bias, scale,
                                                        alibi_slopes, head_mask)
  logits = common.dense_logits(q, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                               q_offset=q_offset)
  return _scores.softmax_output(logits, v, mask, head_mask, q.dtype, return_weights)


def crate_mssa(w: Array, **kwargs: Any):
  """``crate_attention(w, w, w, **kwargs)`` for the subspace projection ``w = x U``."""
  return crate_attention(w, w, w, **kwargs)


registry.register_mechanism(
    'crate', kind='module',
    paper='White-Box Transformers via Sparse Rate Reduction (arXiv 2306.01129); Masked '
          'Completion via Structured Diffusion with White-Box Transformers (arXiv '
          '2404.02446)',
    description='MSSA: q = k = v = x U_h per head, softmax(w w^T * scale) w',
    complexity='O(T^2 d) time, O(T^2) memory (dense reference)',
    implementations={"xla": crate_attention})
