"""NNX attention modules of the catalogue: one file per module that has parameters.

Each file holds one class with explicit typed keyword arguments, registered in that file with
``@attnlab.nn.register_attention_module(name)``; the class fixes its mechanism and ends its
call in the mechanism's pure function (``attnlab.core.mechanisms.<name>``). Importing this
package imports every module in this folder, so a new file is picked up with no central list.
Mechanisms without parameters of their own (softmax, sigmoid, momentum_ema, decon_approx,
decon_nonapprox) need no file here: ``attnlab.nn.MultiHeadAttention(mechanism=...)`` runs them.
Shared bases: ``_scores_base.ScoresAttention`` (score-modifying mechanisms) and
``_mixer_base.TokenMixer`` (modules replacing attention).
"""

import importlib as _importlib
import pkgutil as _pkgutil

for _info in sorted(_pkgutil.iter_modules(__path__), key=lambda i: i.name):
  if not _info.name.startswith("_"):
    _importlib.import_module(f"{__name__}.{_info.name}")
