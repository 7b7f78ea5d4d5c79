"""Study trained attention: an instrumented forward pass, interventions, lenses, methods.

``run_with_cache(model, tokens, names=..., edits=...)`` returns logits and the named
activations (``attnlab.analysis.hooks``); ``Edit`` values are traced interventions (head
ablation / scaling, logit biases, activation and path patching). Everything runs with the
model's own attention implementation (xla, chunked, pallas): patterns are recomputed from q/k
for the layers asked for, interventions act on q/k/v/z. Methods from the literature live in
``attnlab.analysis.methods`` (one file each); ``python -m attnlab.analysis <method>`` runs
them on a checkpoint.
"""

from attnlab.analysis.forward import Cache, check_model, run, run_with_cache
from attnlab.analysis.hooks import (Edit, head_logit_bias, head_vector, mean_ablate_heads,
                                    patch, scale_heads, value_mix)

__all__ = ["run_with_cache", "run", "Cache", "check_model", "Edit", "scale_heads",
           "mean_ablate_heads", "patch", "head_logit_bias", "value_mix", "head_vector"]
