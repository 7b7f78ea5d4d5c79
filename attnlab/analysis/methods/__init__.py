"""Head- and layer-level methods of the literature, one file each (each cites its paper):

* ``retrieval``: retrieval-head copy-paste score (arXiv 2404.15574)
* ``induction``: induction-head and successor-head scores (arXiv 2209.11895, 2312.09230)
* ``sinks``: attention-sink detection and ACT calibration (arXiv 2406.15765)
* ``zerotuning``: per-head initial-token attention scaling (arXiv 2505.11739)
* ``headhunter``: SoftPAG perturbation and HeadHunter greedy head selection (arXiv 2506.10978)
* ``attention_influence``: data selection by masked-head loss deltas (arXiv 2505.07293)
* ``ablation``: single-head ablation sweep on a metric (arXiv 2410.13708)
* ``redundancy``: layer redundancy as input/output similarity (arXiv 2406.15786)
* ``answer_tracing``: logit-lens answer tracing (arXiv 2405.03205)
* ``probes``: per-layer linear probes (arXiv 2404.07066)

All run on the instrumented pass of ``attnlab.analysis`` and so with any attention
implementation of the model (xla, chunked, pallas).
"""

from attnlab.analysis.methods.ablation import ablation_edits, ablation_sweep, mean_head_outputs
from attnlab.analysis.methods.answer_tracing import answer_emergence
from attnlab.analysis.methods.attention_influence import attention_influence, select
from attnlab.analysis.methods.headhunter import (guided_logits, head_hunter, kl_objective,
                                                 softpag_edits)
from attnlab.analysis.methods.induction import (induction_scores, repeated_tokens,
                                                successor_scores)
from attnlab.analysis.methods.probes import layer_features, probe_layers
from attnlab.analysis.methods.redundancy import layer_redundancy
from attnlab.analysis.methods.retrieval import retrieval_scores
from attnlab.analysis.methods.sinks import (act_edits, received_attention, sink_heads,
                                            sink_scores)
from attnlab.analysis.methods.zerotuning import zerotuning_edits, zerotuning_search

__all__ = ["ablation_edits", "ablation_sweep", "mean_head_outputs", "answer_emergence",
           "attention_influence", "select", "guided_logits", "head_hunter", "kl_objective",
           "softpag_edits", "induction_scores", "repeated_tokens", "successor_scores",
           "layer_features", "probe_layers", "layer_redundancy", "retrieval_scores",
           "act_edits", "received_attention", "sink_heads", "sink_scores",
           "zerotuning_edits", "zerotuning_search"]
