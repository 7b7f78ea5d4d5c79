"""Wide versus deep: trade depth for heads per layer at a fixed total number of heads.

Paper: "Wide Attention Is The Way Forward For Transformers?" (Brown, Zhao, Shumailov, Mullins;
arXiv 2210.00640). The model aspect ratio trades the number of layers ``L`` against the heads
per layer ``H_l`` while keeping the total number of heads ``L * H_l = H_total`` and every other
hyperparameter fixed (the attention computation size is fixed, so the attention parameters are
the same for every ``L`` and wider models are smaller: fewer MLPs). Departure: none in the
sweep; we keep ``head_dim`` and ``d_model`` fixed, and use plain MHA (``num_kv_heads`` unset).
"""

from __future__ import annotations

from typing import Sequence
from attnlab.core import registry


def wide_deep_shapes(total_heads: int, depths: Sequence[int]) -> list[tuple[int, int]]:
  """``[(num_layers, heads_per_layer)]`` with ``num_layers * heads_per_layer == total_heads``."""
  if isinstance(total_heads, bool) or not isinstance(total_heads, int) or total_heads <= 0:
    raise ValueError(f"total_heads must be a positive int, got {total_heads!r}")
  out = []
  for d in depths:
    if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
      raise ValueError(f"depths must be positive ints, got {tuple(depths)}")
    if total_heads % d:
      raise ValueError(f"depth {d} does not divide total_heads={total_heads}")
    out.append((d, total_heads // d))
  return out


def divisor_depths(total_heads: int) -> tuple[int, ...]:
  """Every depth that divides ``total_heads`` (1 = widest, ``total_heads`` = deepest)."""
  return tuple(d for d in range(1, total_heads + 1) if total_heads % d == 0)


registry.register_mechanism(
    'wide_deep', kind='block',
    paper='Wide Attention Is The Way Forward For Transformers? (arXiv 2210.00640)',
    description='fixed total heads, depth traded for heads per layer '
                '(attnlab.models.wide_deep_configs, configs/wide_vs_deep.py); this entry is '
                'the widest point of a 4-head sweep: 1 layer x 4 heads',
    complexity='as softmax attention; L * H_l = H_total fixed')
