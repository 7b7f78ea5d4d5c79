"""Catalogue entries: score-modifying mechanisms (``attnlab.core.mechanisms_scores``).

Each entry's ``config`` holds the complete dotted overrides that select it for a decoder LM
(``config.model.*``); "module" entries are built by ``attnlab.nn.mechanisms_scores``.
"""

from attnlab.core import mechanisms_scores  # noqa: F401  (registers the pure functions)
from attnlab.core.registry import register_mechanism

_DENSE = "O(T^2 d) time, O(T^2) memory (dense reference)"

ENTRIES = {
    "selective_ssa": dict(
        paper="Selective Attention: Enhancing Transformer through Principled Context Control "
              "(arXiv 2411.12892)",
        description="softmax((tau_q,i q_i) k_j * scale) (tau_v,j v_j); tau_q = 1 + tanh(q.w) "
                    "+ s log(n_i), tau_v = 1 + tanh(v.u)",
        config={"model.attention.mechanism": "selective_ssa",
                "model.attention.kwargs.query_temperature": True,
                "model.attention.kwargs.position_temperature": True,
                "model.attention.kwargs.value_temperature": True},
        complexity=_DENSE),
    "deberta": dict(
        paper="DeBERTa: Decoding-enhanced BERT with Disentangled Attention (arXiv 2006.03654)",
        description="softmax((q_i.k_j + q_i.k_r[d(i,j)] + k_j.q_r[d(j,i)]) / sqrt(3d)) v, "
                    "d = clipped relative distance",
        config={"model.attention.mechanism": "deberta", "model.position": "none",
                "model.attention.kwargs.max_distance": 16,
                "model.attention.kwargs.log_buckets": False},
        complexity="O(T^2 d + T m d) time, O(T^2 + T m) memory (m = max_distance)"),
    "rcmha": dict(
        paper="RCMHA: Relative Convolutional Multi-Head Attention for Natural Language "
              "Modelling (arXiv 2308.03429)",
        description="causal depth-wise conv on q/k/v, then softmax((q_i+u).k_j + "
                    "(q_i+w).r[i-j]) v (Transformer-XL relative terms)",
        config={"model.attention.mechanism": "rcmha", "model.position": "none",
                "model.attention.kwargs.max_distance": 32,
                "model.attention.kwargs.kernel_size": 3},
        complexity="O(T^2 d + T m d + T c d) time, O(T^2 + T m) memory (m = max_distance, "
                   "c = kernel_size)"),
    "complexformer": dict(
        paper="ComplexFormer: Disruptively Advancing Transformer Inference Ability via "
              "Head-Specific Complex Vector Attention (arXiv 2505.10222)",
        description="sum_c r_q r_k cos(a_h (theta_q - theta_k) + b_h + s_h (m - n) omega_c); "
                    "RoPE at a=1, b=0, s=1",
        config={"model.attention.mechanism": "complexformer", "model.position": "none"},
        complexity=_DENSE),
    "gpsa": dict(
        paper="ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases "
              "(arXiv 2103.10697)",
        description="(1 - sigmoid(l_h)) softmax(q k^T) + sigmoid(l_h) softmax(v_pos . "
                    "(delta^2, delta)), 1-D relative positions, locality init",
        config={"model.attention.mechanism": "gpsa", "model.position": "none",
                "model.attention.kwargs.locality_strength": 1.0,
                "model.attention.kwargs.gate_init": 1.0},
        complexity=_DENSE),
    "momentum_ema": dict(
        paper="Why Can GPT Learn In-Context? Language Models Implicitly Perform Gradient "
              "Descent as Meta-Optimizers (arXiv 2212.10559)",
        description="softmax attention + eta * sum_{i<t} momentum^(t-i) v_i",
        config={"model.attention.mechanism": "momentum_ema",
                "model.attention.kwargs.momentum": 0.9, "model.attention.kwargs.eta": 1.0,
                "model.attention.kwargs.include_current": False},
        complexity=_DENSE),
    "random_qk": dict(
        paper="What can a Single Attention Layer Learn? A Study Through the Random Features "
              "Lens (arXiv 2307.11353)",
        description="softmax(x_i^T W_h x_j / sqrt(E)) v, W_h frozen random (mean qk_mean * I), "
                    "values trained",
        config={"model.attention.mechanism": "random_qk", "model.position": "learned",
                "model.attention.kwargs.qk_mean": 0.0},
        complexity="O(T^2 E + T E^2) time per head, O(T^2) memory (E = d_model)"),
    "crate": dict(
        paper="White-Box Transformers via Sparse Rate Reduction (arXiv 2306.01129); Masked "
              "Completion via Structured Diffusion with White-Box Transformers "
              "(arXiv 2404.02446)",
        description="MSSA: q = k = v = x U_h per head, softmax(w w^T * scale) w",
        config={"model.attention.mechanism": "crate", "model.position": "learned"},
        complexity=_DENSE),
}

for _name, _entry in ENTRIES.items():
  # Pin the dense reference (the only implementation) so a base config that pins another
  # implementation (e.g. "chunked") still builds.
  _entry["config"]["model.attention.implementation"] = "xla"
  register_mechanism(_name, kind=mechanisms_scores.MECHANISMS[_name][0], kernel="-", **_entry)
