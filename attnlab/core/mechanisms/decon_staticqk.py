"""Deconstructing Attention -- "StaticEmbQK": Q, K from the static input embeddings.

Paper: "Deconstructing Attention: Investigating Design Principles for Effective Language
Modeling" (Xue, Moosavi & Aletras, arXiv 2510.11602), Eq. 13: Q and K are projections of the
static (layer-0) input embeddings, V of the current hidden state. The math is
``attnlab.core.mechanisms.softmax.softmax_attention`` on those Q, K; the NNX module
``attnlab.nn.mechanisms.decon_staticqk.StaticEmbQKAttention`` holds the projections. Departure:
the embedding is the normalised input of layer 0, shared by every layer; "FixedSeqQK" (a fixed
natural-text sequence through the stack) is not implemented.
"""

from attnlab.core import registry

registry.register_mechanism(
    'decon_staticqk', kind='module',
    paper='Deconstructing Attention: Investigating Design Principles for Effective Language '
          'Modeling (arXiv 2510.11602) -- StaticEmbQK (Q, K from the static input '
          'embeddings)',
    description="softmax((e W_Q)(e W_K)^T / sqrt(d)) x W_V, e = layer 0's normalised embedding "
                'input, shared with every layer',
    complexity='O(T^2 d) time, O(T d) memory (its module runs chunked / pallas softmax)')
