"""Per-layer interleaving of attention mechanisms.

Paper: "Deconstructing Attention: Investigating Design Principles for Effective Language
Modeling" (Xue, Moosavi, Aletras; arXiv 2510.11602). The paper relaxes attention's design
principles (token mixing, sequence dependence, the dot-product + softmax form, coupling of q/k
to the current hidden state) in controlled variants and studies *hybrid* models in which only
some layers keep standard attention: layer ``l`` computes ``x + Mix_l(LN(x))`` with
``Mix_l in {softmax attention, variant}`` chosen per layer.

What we implement: the per-layer selection. ``config.model.attention.layer_mechanisms`` is a
tuple with one mechanism name per layer (empty = every layer uses
``config.model.attention.mechanism``). The variants themselves are ordinary attention
mechanisms/modules registered elsewhere (e.g. the "mixer_*" modules).

Departures: ``config.model.attention.kwargs`` (the mechanism hyperparameters) are given only to
the layers whose mechanism is ``config.model.attention.mechanism``; layers using another
mechanism get that mechanism's default hyperparameters (one kwargs dict cannot be valid for
two different mechanisms). The paper's interleaving patterns (which layers keep standard
attention) are a config choice here, not fixed.
"""

from __future__ import annotations

from typing import Iterable, Sequence
from attnlab.core import registry


def layer_mechanisms(mechanism: str, per_layer: Sequence[str] | None, num_layers: int, *,
                     known: Iterable[str] | None = None) -> tuple[str, ...]:
  """The attention mechanism of every layer: ``per_layer`` or ``(mechanism,) * num_layers``.

  Args:
    mechanism: the model-wide mechanism (``config.model.attention.mechanism``).
    per_layer: ``config.model.attention.layer_mechanisms``; empty/None = all ``mechanism``.
    num_layers: number of transformer blocks.
    known: valid names (e.g. ``attnlab.nn.list_attention_mechanisms()``); None skips the
      name check.

  Raises:
    ValueError: wrong length, a non-string entry, or an unknown name (listing the valid ones).
  """
  if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers <= 0:
    raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
  if per_layer is None or len(per_layer) == 0:
    return (mechanism,) * num_layers
  if isinstance(per_layer, str):
    raise ValueError("attention.layer_mechanisms must be a tuple of names (one per layer), "
                     f"got the string {per_layer!r}")
  names = tuple(per_layer)
  if len(names) != num_layers:
    raise ValueError(f"attention.layer_mechanisms needs one name per layer: num_layers="
                     f"{num_layers}, got {len(names)} names {names}")
  bad = [n for n in names if not isinstance(n, str)]
  if bad:
    raise ValueError(f"attention.layer_mechanisms entries must be strings, got {bad}")
  if known is not None:
    known = sorted(set(known))
    unknown = sorted({n for n in names if n not in known})
    if unknown:
      raise ValueError(f"attention.layer_mechanisms has unknown mechanism(s) {unknown}; valid "
                       f"mechanisms: {known}")
  return names


registry.register_mechanism(
    'interleave', kind='block',
    paper='Deconstructing Attention: Investigating Design Principles for Effective Language '
          'Modeling (arXiv 2510.11602)',
    description='per-layer mechanism list: layer l uses attention.layer_mechanisms[l]; the '
                "default hybrid keeps softmax attention in layer 0 and the paper's RndEmbQK "
                "variant (mixer_fixed: fixed, input-independent mixing) in layer 1",
    complexity="that of each layer's mechanism")
