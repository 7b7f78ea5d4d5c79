"""SLAB simplified linear attention: ReLU kernel, normalised, plus a depthwise convolution
on V.

Paper: "SLAB: Efficient Transformers with Simplified Linear Attention and Progressive
Re-parameterized Batch Normalization" (Guo, Chen, Tang, Wang, Wang, Han & Wang; ICML 2024,
arXiv 2405.11582), Eq. 6 (simplified linear attention, after FLatten)::

    O = ReLU(Q) (ReLU(K)^T V) / (ReLU(Q) sum_j ReLU(K_j)^T) + DWC(V)

Departures: the paper's DWC is a 2-D 3x3 depthwise convolution over image tokens; here it is a
1-D depthwise convolution along time of width ``W`` (default 4), causal in a decoder (its last
``W - 1`` values are part of the O(1) decode state) and centred when bidirectional; the
normaliser gets ``eps = 1e-6``. Progressive re-parameterised BatchNorm (the paper's other half)
is the separate catalogue entry ``prepbn``.
"""

from __future__ import annotations

from typing import Any

import jax

from attnlab.core import registry
from attnlab.core.linear import feature_maps, linear_attention
from attnlab.core.linear.conv import depthwise_conv

Array = jax.Array


def slab_attention(q: Array, k: Array, v: Array, *, conv_kernel: Array, causal: bool = True,
                   form: str = "chunked", chunk_size: int = 64, eps: float = 1e-6,
                   initial_state: tuple[Array, Array] | None = None,
                   return_state: bool = False) -> Any:
  """q, k ``[B, T, H, D]``, v ``[B, T, H, Dv]``, ``conv_kernel [W, H, Dv]`` ->
  ``[B, T, H, Dv]``; state ``(s [B, H, D, Dv + 1], v_tail [B, W - 1, H, Dv])``."""
  s0, tail = (None, None) if initial_state is None else initial_state
  out = linear_attention(feature_maps.relu(q), feature_maps.relu(k), v, normalize=True,
                         eps=eps, causal=causal, form=form, chunk_size=chunk_size,
                         initial_state=s0, return_state=return_state)
  if return_state:
    out, s = out
  local, new_tail = depthwise_conv(v, conv_kernel, causal=causal, history=tail)
  out = (out.astype(local.dtype) + local).astype(q.dtype)
  return (out, (s, new_tail)) if return_state else out


registry.register_mechanism(
    "slab_linear", kind="module",
    paper="SLAB: Efficient Transformers with Simplified Linear Attention and Progressive "
          "Re-parameterized Batch Normalization (arXiv 2405.11582)",
    description="ReLU(q)^T sum ReLU(k) v^T / ReLU(q)^T sum ReLU(k) + DWC(v)",
    complexity="O(T d^2 + T W d) time, O(d^2 + W d) decode state")
