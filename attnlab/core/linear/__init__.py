"""Linear and recurrent attention: one core, three forms (pure JAX, no Flax).

Per head, with feature-mapped queries/keys ``q_t, k_t [Dk]`` (the caller applies the feature
map phi; ``feature_maps`` holds the shared ones), values ``v_t [Dv]``, a log-decay ``g_t``
(``<= 0``: none, a scalar per head, or per key channel) and an optional delta-rule strength
``beta_t``, the state ``S_t [Dk, Dv]`` follows::

    plain:  S_t = diag(exp g_t) S_{t-1} + k_t v_t^T
    delta:  S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    output: o_t = S_t^T q_t            (normalised: o_t / (q_t . z_t + eps), z_t the same
                                        recurrence with v_t = 1)

Bidirectional (``causal=False``, plain only): ``o_i = sum_j w_ij (q_i.k_j) v_j`` with
``w_ij = prod_{l in (min(i,j), max(i,j)]} exp(g_l)`` (per channel), i.e. a causal pass plus a
reversed causal pass minus the diagonal.

Forms (``form=``), equal up to float rounding (tests/core/test_linear_forms.py):

* ``"parallel"``: quadratic reference (O(T^2 Dk) memory); the delta rule solves the
  unit-lower-triangular system ``(I + diag(beta) A) U = diag(beta) V`` for the pseudo-values.
* ``"chunked"``: chunks of C: intra-chunk quadratic plus inter-chunk states, O(T C Dk + T Dk Dv)
  time, O(T C + T Dk Dv / C) memory (O(T C Dk) with a per-channel decay, whose intra-chunk
  weights are an explicit ``[C, C, Dk]`` tensor); the delta rule in the WY form (per chunk
  ``U = T_c (V - diag(exp L) K S)``, ``T_c = (I + diag(beta) A)^-1 diag(beta)``; after
  "Parallelizing Linear Transformers with the Delta Rule over Sequence Length", arXiv
  2406.06484). T need not be a multiple of C (zero padding leaves the state unchanged).
  The unit-lower-triangular inverse is built by 2x2 blocks in ``log2 C`` rounds of batched
  matmuls (not LAPACK's solve, which can deadlock on CPU; ``forms._unit_lower_inverse``).
* ``"recurrent"``: one state update per step (``lax.scan``); ``step`` is one update, the
  decode path of the NNX modules (state O(1) in sequence length).

Module map: ``forms.py`` (the three forms and ``linear_attention``), ``feature_maps.py``
(phi: elu+1, ReLU, Taylor, ...). Mechanisms built on it live in ``attnlab/core/mechanisms``
(linear, retnet, gla, deltanet, gated_deltanet, slab_linear, inline, nalaformer, soft,
decon_approx); the Pallas chunk kernel is ``attnlab.kernels.linear``.
"""

from attnlab.core.linear.feature_maps import FEATURE_MAPS, feature_map  # noqa: F401
from attnlab.core.linear.forms import (FORMS, linear_attention, state_shape,  # noqa: F401
                                       step)

__all__ = ["FEATURE_MAPS", "FORMS", "feature_map", "linear_attention", "state_shape", "step"]
