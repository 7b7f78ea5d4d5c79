"""Wide-versus-deep sweeps at a fixed total number of heads (arXiv 2210.00640).

``wide_deep_configs(base_cfg, total_heads, depths)`` returns one config per depth ``L`` with
``num_layers = L`` and ``num_heads = total_heads // L``; ``head_dim`` (default: the base's
``head_dim`` or ``d_model // num_heads``), ``d_model`` and every other key stay fixed, so the
attention parameters are the same at every depth (``attnlab.core.variants.wide_deep``).
``base_cfg`` may be a trainer config (with ``.model``) or a model config.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

from attnlab.core.variants.wide_deep import divisor_depths, wide_deep_shapes


def _model(cfg: Any) -> Any:
  return cfg.model if "model" in cfg else cfg


def wide_deep_configs(base_cfg: Any, total_heads: int, depths: Sequence[int] | None = None, *,
                      head_dim: int | None = None) -> list[Any]:
  """One copy of ``base_cfg`` per depth (default: every divisor of ``total_heads``)."""
  depths = divisor_depths(total_heads) if depths is None else tuple(depths)
  base_model = _model(base_cfg)
  if head_dim is None:
    head_dim = base_model.get("head_dim") or base_model.d_model // base_model.num_heads
  out = []
  for num_layers, heads in wide_deep_shapes(total_heads, depths):
    cfg = copy.deepcopy(base_cfg)
    m = _model(cfg)
    m.num_layers = num_layers
    m.num_heads = heads
    m.head_dim = head_dim
    m.num_kv_heads = None
    for key in ("layer_mechanisms",):  # per-layer lists would no longer match num_layers
      if m.attention.get(key):
        raise ValueError(f"wide_deep_configs: base config sets attention.{key}; per-layer "
                         "settings do not carry over to other depths")
    out.append(cfg)
  return out
