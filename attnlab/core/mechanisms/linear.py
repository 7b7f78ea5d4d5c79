"""Linear attention with the elu+1 feature map (the field's plain baseline).

Paper: "Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention"
(Katharopoulos, Vyas, Pappas & Fleuret, arXiv 2006.16236), Eq. 4-5 and the causal recurrence
Eq. 18-20::

    phi(x) = elu(x) + 1
    o_i = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps),  S_i = sum_{j<=i} phi(k_j) v_j^T,
    z_i = sum_{j<=i} phi(k_j)

(``j`` over all positions when bidirectional). Computed by ``attnlab.core.linear`` in any of
its three forms. Departures: none in the math; ``eps = 1e-6`` as the authors' code; GQA kv
heads are repeated by the module (a state per query head).
"""

from __future__ import annotations

from typing import Any

import jax

from attnlab.core import registry
from attnlab.core.linear import feature_maps, linear_attention

Array = jax.Array


def elu_linear_attention(q: Array, k: Array, v: Array, *, causal: bool = True,
                         form: str = "chunked", chunk_size: int = 64, eps: float = 1e-6,
                         initial_state: Array | None = None, return_state: bool = False) -> Any:
  """q, k ``[B, T, H, D]``, v ``[B, T, H, Dv]`` -> ``[B, T, H, Dv]`` (state
  ``[B, H, D, Dv + 1]``: numerator and normaliser)."""
  return linear_attention(feature_maps.elu1(q), feature_maps.elu1(k), v, normalize=True,
                          eps=eps, causal=causal, form=form, chunk_size=chunk_size,
                          initial_state=initial_state, return_state=return_state)


registry.register_mechanism(
    "linear_elu", kind="module",
    paper="Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention "
          "(arXiv 2006.16236)",
    description="phi(q)^T sum phi(k) v^T / phi(q)^T sum phi(k), phi = elu + 1",
    complexity="O(T d^2) time, O(d^2) decode state (chunked: O(T C d + T d^2))")
