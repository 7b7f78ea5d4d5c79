"""Attention mechanisms: one file per mechanism, each with its pure function(s) and its
registration (``attnlab.core.registry.register_mechanism``) at the bottom of the same file.

Importing this package imports every module in this folder, so a new file here is picked up
with no central list to edit (see docs/ARCHITECTURE.md, "Add a mechanism in three files").
Modules whose name starts with ``_`` hold shared helpers (``_scores``: relative-position and
logits helpers of the score-modifying mechanisms; ``_mixers``: helpers of the token mixers).
Import a mechanism's function from its module, e.g.
``from attnlab.core.mechanisms.deberta import deberta_attention``.
"""

import importlib as _importlib
import pkgutil as _pkgutil

# softmax first: chunked.py and most mechanisms build on it.
for _name in ["softmax"] + sorted(i.name for i in _pkgutil.iter_modules(__path__)
                                  if not i.name.startswith("_") and i.name != "softmax"):
  _importlib.import_module(f"{__name__}.{_name}")
