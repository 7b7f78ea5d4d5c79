"""Catalogue entries: token mixers replacing attention, attention ablations, TAP + ADL and
attention pooling heads (``attnlab.core.mechanisms_mixers``).

Each entry's ``config`` holds the complete dotted overrides that select it in a training
config based on ``configs/mqar.py``. Token mixers and attention variants select
``model.attention.mechanism`` (modules in ``attnlab.nn.mechanisms_mixers``); the pooling heads
switch to an encoder classifier (``model.name = "encoder_classifier"``) on the synthetic
"mqar_classification" task and select ``model.pooling`` with its options in
``model.pooling_kwargs``. ``model.num_classes = 128`` covers ``vocab_size <= 256`` (labels are
``value - vocab_size // 2``; ``attnlab.data.num_classes(config.data)`` gives the exact count).
"""

from attnlab.core import mechanisms_mixers
from attnlab.core.registry import register_mechanism

_DECON = ("Deconstructing Attention: Investigating Design Principles for Effective Language "
          "Modeling (arXiv 2510.11602)")
_DENSE = "O(T^2 d) time, O(T^2) memory (dense reference)"


def _pooling(name: str, options: dict) -> dict:
  return {"model.name": "encoder_classifier", "data.name": "mqar_classification",
          "model.num_classes": 128, "model.pooling": name, "model.pooling_kwargs": options}


ENTRIES = {
    "ninformer": dict(
        paper="NiNformer: A Network in Network Transformer with Token Mixing Generated Gating "
              "Function (arXiv 2403.02411)",
        description="(x W_p + b_p) * MixerBlock(x): token-mixing MLP over positions "
                    "(lower-triangular for causal LM) then channel MLP, as an element-wise "
                    "gate",
        config={"model.attention.mechanism": "ninformer",
                "model.attention.kwargs.token_expansion": 1,
                "model.attention.kwargs.channel_mlp_dim": 0},
        complexity="O(T^2 d r) time, O(T^2 r) parameters (r = token_expansion, T = max_len)"),
    "mixer_none": dict(
        paper=_DECON + " -- MLP variant (no token mixing)",
        description="O = FC_dn(SiLU(FC_gt(x)) * FC_up(x)) per token, sized to match "
                    "attention's parameter count",
        config={"model.attention.mechanism": "mixer_none",
                "model.attention.kwargs.hidden_dim": 0},
        complexity="O(T d m) time (m = hidden_dim)"),
    "mixer_fixed": dict(
        paper=_DECON + " -- RndEmbQK (fixed, input-independent mixing)",
        description="softmax((eps W_Q)(eps W_K)^T / sqrt(d)) x W_V, eps a fixed random "
                    "positional embedding: one learned causal mixing matrix for all inputs",
        config={"model.attention.mechanism": "mixer_fixed",
                "model.attention.kwargs.embedding": "random",
                "model.attention.kwargs.embedding_std": 1.0},
        complexity=_DENSE),
    "decon_approx": dict(
        paper=_DECON + " -- Approximate (2nd-order Taylor softmax, after Based)",
        description="A = f(q.k/sqrt(d)) / sum f, f(s) = 1 + s + s^2/2",
        config={"model.attention.mechanism": "decon_approx",
                "model.attention.implementation": "xla"},
        complexity=_DENSE + "; linear-time recurrent form exists"),
    "decon_nonapprox": dict(
        paper=_DECON + " -- Non-approximate (element-wise self-gating)",
        description="A_ij = softmax_{j<=i}(sum_d SiLU(q_j) k_j / sqrt(d)): per-key self scores, "
                    "no pairwise similarity",
        config={"model.attention.mechanism": "decon_nonapprox",
                "model.attention.implementation": "xla", "model.position": "none",
                "model.attention.kwargs.q_activation": "silu"},
        complexity=_DENSE + "; linear-time recurrent form exists"),
    "decon_staticqk": dict(
        paper=_DECON + " -- StaticEmbQK (Q, K from the static input embeddings)",
        description="softmax((e W_Q)(e W_K)^T / sqrt(d)) x W_V, e = layer 0's normalised "
                    "embedding input, shared with every layer",
        config={"model.attention.mechanism": "decon_staticqk",
                "model.attention.implementation": "xla"},
        complexity=_DENSE),
    "tap_adl": dict(
        paper="Robustifying Token Attention for Vision Transformers (arXiv 2303.11126)",
        description="attention over token-aware average pooled inputs (per-token softmax mix of "
                    "dilated 1-D neighbourhood means) + attention diversification loss "
                    "(cosine of thresholded rows to their mean row) sown as aux_loss",
        config={"model.attention.mechanism": "tap_adl",
                "model.attention.implementation": "xla",
                "model.attention.kwargs.num_scales": 4,
                "model.attention.kwargs.tap_temperature": 1.0,
                "model.attention.kwargs.adl_weight": 1.0,
                "model.attention.kwargs.adl_threshold": 2.0},
        complexity=_DENSE + " (weights materialised for ADL)"),
    "lowrank_mha_pool": dict(
        paper="Low Rank Factorization for Compact Multi-Head Self-Attention "
              "(arXiv 1912.00835)",
        description="m heads a_k = softmax_i tanh((P_k^T c).(Q_k^T h_i)) with a learned global "
                    "query c; pooled = concat_k a_k H",
        config=_pooling("lowrank_mha_pool", {"num_heads": 4, "rank": 1, "context": "learned",
                                             "l2_normalize": True}),
        complexity="O(T d m r) time (m heads, rank r)"),
    "multilayer_pool": dict(
        paper="Pooling And Attention: What Are Effective Designs For LLM-Based Embedding "
              "Models? (arXiv 2409.02727)",
        description="learned latents cross-attend to per-layer summaries of every layer's "
                    "hidden states (+ layer embedding), GEGLU FF, mean, L2 normalise",
        config=_pooling("multilayer_pool", {"num_latents": 8, "num_heads": 0, "head_dim": 0,
                                            "ff_mult": 4, "summary": "mean",
                                            "normalize": True}),
        complexity="O(L T d + N L d) time (L layers, N latents)"),
}

for _name, _entry in ENTRIES.items():
  register_mechanism(_name, kind=mechanisms_mixers.MECHANISMS[_name], kernel="-", **_entry)
