"""Wide versus deep (arXiv 2210.00640): ``wide_deep_shapes`` keeps the total number of heads;
``attnlab.models.wide_deep_configs`` sweeps keep the attention parameters and grow the model
with depth; ``configs/wide_vs_deep.py``; the catalogue entry."""

import importlib.util

import jax
import pytest
from flax import nnx

from attnlab.core.variants import wide_deep
from attnlab.models import build_model, count_params, wide_deep_configs

from _variant_helpers import E, ROOT, V, cfg_of, check_block_entry  # noqa: I100


# ---------------------------------------------------------------------------------------------
# Pure functions.


def test_wide_deep_shapes_keep_total_heads():
  for total in (1, 4, 6, 12):
    shapes = wide_deep.wide_deep_shapes(total, wide_deep.divisor_depths(total))
    assert all(l * h == total for l, h in shapes)
    assert shapes[0] == (1, total) and shapes[-1] == (total, 1)
  with pytest.raises(ValueError, match="does not divide"):
    wide_deep.wide_deep_shapes(6, (4,))


# ---------------------------------------------------------------------------------------------
# Catalogue entry.


def test_wide_deep_catalogue_entry():
  check_block_entry("wide_deep")



# ---------------------------------------------------------------------------------------------
# Models.


def test_wide_deep_sweep_keeps_total_heads_and_attention_size():
  base = cfg_of(num_layers=2, num_heads=2, d_model=E)
  sweep = wide_deep_configs(base, 4, (1, 2, 4), head_dim=8)
  assert [c.num_layers * c.num_heads for c in sweep] == [4, 4, 4]
  attn_params, total = [], []
  for c in sweep:
    m = build_model(c, vocab_size=V, rngs=nnx.Rngs(0))
    params = nnx.state(m, nnx.Param)
    attn_params.append(sum(x.size for b in params["stack"]["blocks"].values()
                           for x in jax.tree.leaves(b["attention"])))
    total.append(count_params(m))
  assert attn_params == [4 * E * 4 * 8] * 3  # q, k, v, o over all heads: the same at any depth
  assert total[0] < total[1] < total[2]  # wider = fewer MLPs = smaller (the paper's point)
  spec = importlib.util.spec_from_file_location("wd_cfg", f"{ROOT}/configs/wide_vs_deep.py")
  wd = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(wd)
  for arg, layers in (("depth=2", 2), ("depth=4,heads=8,local", 4), ("", 1)):
    c = wd.get_config(arg)
    assert c.model.num_layers == layers
    assert c.model.num_layers * c.model.num_heads == (8 if "heads=8" in arg else 4)
  with pytest.raises(ValueError, match="does not divide"):
    wd.get_config("depth=3")
