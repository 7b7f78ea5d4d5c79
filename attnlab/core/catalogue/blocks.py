"""Catalogue entries: block- and depth-level mechanisms (``attnlab.core.mechanisms_blocks``).

Each entry's ``config`` holds the complete dotted overrides that select it for a decoder LM
(``config.model.*`` keys of ``attnlab.models.default_model_config``); the pieces with
parameters are built by ``attnlab.nn.variants`` and wired by ``attnlab.nn.blocks``. The
overrides set ``model.num_layers = 2`` where the mechanism needs more than one layer (the tiny
MQAR config has one).
"""

from attnlab.core import mechanisms_blocks  # noqa: F401  (pure functions)
from attnlab.core.registry import register_mechanism

ENTRIES = {
    "interleave": dict(
        paper="Deconstructing Attention: Investigating Design Principles for Effective "
              "Language Modeling (arXiv 2510.11602)",
        description="per-layer mechanism list: layer l uses attention.layer_mechanisms[l]; "
                    "the default hybrid keeps softmax attention in layer 0 and the paper's "
                    "RndEmbQK variant ('mixer_fixed': fixed, input-independent mixing) in "
                    "layer 1",
        config={"model.num_layers": 2,
                "model.attention.layer_mechanisms": ("softmax", "mixer_fixed")},
        complexity="that of each layer's mechanism"),
    "echoatt": dict(
        paper="EchoAtt: Attend, Copy, then Adjust for More Efficient Large Language Models "
              "(arXiv 2409.14595)",
        description="sharing layers reuse an anchor layer's attention weights A_a and keep "
                    "their own values and output projection: out_l = (A_a V_l) W_O,l",
        config={"model.num_layers": 2, "model.echo.anchors": (0,),
                "model.echo.sharing_layers": (1,)},
        complexity="sharing layer: O(T^2 d) (weights @ V), no q/k projections or softmax"),
    "layernorm_scaling": dict(
        paper="The Curse of Depth in Large Language Models (arXiv 2502.05795)",
        description="pre-LN outputs scaled by 1/sqrt(l), l = 1-based layer depth (norm "
                    "'layernorm_scaled'; 'rmsnorm_scaled' for RMSNorm)",
        config={"model.num_layers": 2, "model.norm": "layernorm_scaled"},
        complexity="O(T d) per norm (as LayerNorm)"),
    "prepbn": dict(
        paper="SLAB: Efficient Transformers with Simplified Linear Attention and Progressive "
              "Re-parameterized Batch Normalization (arXiv 2405.11582)",
        description="lambda LN(x) + (1 - lambda) (BN(x) + eta x), lambda 1 -> 0 linearly over "
                    "prepbn.decay_steps training calls after prepbn.warmup_steps; RepBN folds "
                    "to a x + c at inference",
        config={"model.norm": "layernorm_prepbn", "model.prepbn.warmup_steps": 0,
                "model.prepbn.decay_steps": 1000, "model.prepbn.momentum": 0.9,
                "model.prepbn.eta_init": 1.0},
        complexity="O(T d) per norm; inference (lambda = 0) an affine map"),
    "attention_drop": dict(
        paper="What Matters in Transformers? Not All Attention is Needed (arXiv 2406.15786)",
        description="importance 1 - mean_t cos(X, X + Attn(LN(X))) ranks attention sublayers "
                    "(attnlab.nn.variants.attention_layer_importance); "
                    "drop_attention_layers skips those sublayers, MLPs kept",
        config={"model.num_layers": 2, "model.drop_attention_layers": (1,)},
        complexity="dropped layers: no attention compute and no KV cache"),
    "first_router": dict(
        paper="FiRST: Finetuning Router-Selective Transformers for Input-Adaptive Latency "
              "Reduction (arXiv 2410.12513)",
        description="per-layer router p = sigmoid(MLP(x)) on the layer input; training "
                    "x + p (Layer(x) - x); decoding skips the layer where p < threshold "
                    "(per token, K/V still cached; or per sequence from the prompt)",
        config={"model.num_layers": 2, "model.router.enabled": True, "model.router.layers": (),
                "model.router.hidden_dim": 16, "model.router.threshold": 0.5,
                "model.router.train_gate": "soft", "model.router.decode_policy": "token",
                "model.router.init_bias": 3.0},
        complexity="router O(T d r) per layer; skipped layers' output discarded"),
    "wide_deep": dict(
        paper="Wide Attention Is The Way Forward For Transformers? (arXiv 2210.00640)",
        description="fixed total heads, depth traded for heads per layer "
                    "(attnlab.nn.variants.wide_deep_configs, configs/wide_vs_deep.py); this "
                    "entry is the widest point of a 4-head sweep: 1 layer x 4 heads",
        config={"model.num_layers": 1, "model.num_heads": 4, "model.head_dim": 16},
        complexity="as softmax attention; L * H_l = H_total fixed"),
}

for _name, _entry in ENTRIES.items():
  register_mechanism(_name, kind="block", kernel="-", **_entry)
