"""The mechanism catalogue: pure-data entries (paper, kind, config overrides, complexity).

Importing this package registers every catalogue entry in ``attnlab.core.registry`` so that
``attnlab.list_mechanisms()`` lists them without importing Flax. Mechanisms with a pure core
function register their implementations in their own module under ``attnlab/core``.
Each group lives in its own module here.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_info.name}")
