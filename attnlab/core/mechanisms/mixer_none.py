"""Deconstructing Attention -- "MLP" variant: no token mixing at all.

Paper: "Deconstructing Attention: Investigating Design Principles for Effective Language Modeling"
(Xue, Moosavi & Aletras, arXiv 2510.11602), Eq. 4-5: attention is replaced by a gated MLP
``O = FC_dn(SiLU(FC_gt(H)) * FC_up(H))``, sized to match the attention's parameter count;
each token only sees itself. Its NNX module is ``attnlab.nn.mechanisms.mixer_none.MixerNone``.
Departure: none in the math; the hidden width default matches attention's parameter count.
"""

from __future__ import annotations

import jax

from attnlab.core import registry
from attnlab.core.mechanisms._mixers import f32

Array = jax.Array

def gated_mlp(x: Array, w_gate: Array, w_up: Array, w_down: Array) -> Array:
  """``(SiLU(x W_gate) * (x W_up)) W_down``: ``x [..., E]``, ``w_gate/w_up [E, M]``,
  ``w_down [M, E]`` -> ``[..., E]`` in x's dtype (Eq. 4-5; no token mixing)."""
  xf = f32(x)
  h = jax.nn.silu(xf @ f32(w_gate)) * (xf @ f32(w_up))
  return (h @ f32(w_down)).astype(x.dtype)


registry.register_mechanism(
    'mixer_none', kind='mixer',
    paper='Deconstructing Attention: Investigating Design Principles for Effective Language '
          'Modeling (arXiv 2510.11602) -- MLP variant (no token mixing)',
    description="O = FC_dn(SiLU(FC_gt(x)) * FC_up(x)) per token, sized to match attention's "
                'parameter count',
    complexity='O(T d m) time (m = hidden_dim)')
