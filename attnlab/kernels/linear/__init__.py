"""Pallas chunk kernel for linear attention (forward and backward), Triton and Mosaic TPU
drivers, interpret mode on CPU.

Algorithm: the chunked form of ``attnlab.core.linear`` for one (batch, head) row: chunks of C
positions are visited in order; each computes ``o_c = (q_c k_c^T * D_c) v_c + (q_c *
gamma^(1..C)) S`` (``D_c[i, j] = gamma^(i - j)`` for ``j <= i``) and then advances the state
``S <- gamma^C S + (k_c * gamma^(C - 1 - j))^T v_c`` kept on chip (a loop carry in the Triton
driver, a VMEM scratch across the sequential chunk axis of the grid in the Mosaic driver).

Backward without a second kernel body: with a constant decay the three gradients are the same
operator on permuted inputs, ``K(a, b, c)_i = sum_{j <= i} gamma^(i-j) (a_i . b_j) c_j``::

    dq = K(dO, v, k),   dk = flip K(flip v, flip dO, flip q),   dv = flip K(flip k, flip q, flip dO)

(flip: reverse time; ``gamma^|i-j|`` is symmetric), so ``custom_vjp`` runs the forward kernel
three times.

Scope (everything else stays in pure JAX, ``attnlab.core.linear``): causal; no decay or a
constant decay per head (RetNet's); the normaliser as an extra value channel. Not fused here:
data-dependent decays (GLA, gated DeltaNet) and the delta rule (its WY solve), and gradients
w.r.t. the decay (RetNet's decays are fixed).

Module map: ``kernel.py`` (the chunk body shared by the drivers), ``triton.py``,
``mosaic_tpu.py`` (drivers), ``api.py`` (``chunk_linear_attention``: padding, layout,
custom_vjp).
"""

from attnlab.kernels.linear.api import chunk_linear_attention  # noqa: F401

__all__ = ["chunk_linear_attention"]
