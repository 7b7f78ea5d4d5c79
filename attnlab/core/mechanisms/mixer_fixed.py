"""Deconstructing Attention -- "RndEmbQK": fixed, input-independent token mixing.

Paper: "Deconstructing Attention: Investigating Design Principles for Effective Language
Modeling" (Xue, Moosavi & Aletras, arXiv 2510.11602), Eq. 9-10: Q and K come from fixed random
positional embeddings ``eps``, so ``softmax((eps W_Q)(eps W_K)^T / sqrt(d))`` is one learned
mixing matrix shared by every input, applied to ``V = x W_V``. The math is
``attnlab.core.mechanisms.softmax.softmax_attention`` on those Q, K; the NNX module
``attnlab.nn.mechanisms.mixer_fixed.FixedQKMixer`` holds the embedding and the projections.
Departure: ``eps`` may also be sinusoidal (``embedding``).
"""

from attnlab.core import registry

registry.register_mechanism(
    'mixer_fixed', kind='mixer',
    paper='Deconstructing Attention: Investigating Design Principles for Effective Language '
          'Modeling (arXiv 2510.11602) -- RndEmbQK (fixed, input-independent mixing)',
    description='softmax((eps W_Q)(eps W_K)^T / sqrt(d)) x W_V, eps a fixed random positional '
                'embedding: one learned causal mixing matrix for all inputs',
    complexity='O(T^2 d) time, O(T^2) memory (dense reference)')
