"""Interleave (one attention mechanism per layer, "Deconstructing Attention" arXiv
2510.11602): ``layer_mechanisms`` and its errors; in a model, per-layer mechanisms with the
kwargs of ``attention.mechanism`` only, equal to a hand-wired stack; the catalogue entry."""

import chex
import numpy as np
import pytest
from flax import nnx

from attnlab.core.variants import interleave
from attnlab.models import default_model_config

from _variant_helpers import check_block_entry, embed, head, model_of, tokens  # noqa: I100


# ---------------------------------------------------------------------------------------------
# Pure function.


def test_layer_mechanisms():
  assert interleave.layer_mechanisms("softmax", (), 3) == ("softmax",) * 3
  assert interleave.layer_mechanisms("softmax", ("softmax", "sigmoid"), 2,
                                     known=["softmax", "sigmoid"]) == ("softmax", "sigmoid")
  with pytest.raises(ValueError, match="one name per layer: num_layers=3, got 2"):
    interleave.layer_mechanisms("softmax", ("softmax", "sigmoid"), 3)
  with pytest.raises(ValueError, match=r"unknown mechanism\(s\) \['nope'\]; valid"):
    interleave.layer_mechanisms("softmax", ("softmax", "nope"), 2, known=["softmax"])
  with pytest.raises(ValueError, match="tuple of names"):
    interleave.layer_mechanisms("softmax", "softmax", 1)


# ---------------------------------------------------------------------------------------------
# Catalogue entry and model config.


def test_interleave_catalogue_entry_and_default_config():
  check_block_entry("interleave")
  assert default_model_config().attention.layer_mechanisms == ()



# ---------------------------------------------------------------------------------------------
# Model.


def test_interleave_per_layer_mechanisms_and_kwargs():
  kw = dict(attention__mechanism="sigmoid",
            attention__kwargs={"sigmoid_bias": -1.0})
  mixed = model_of(attention__layer_mechanisms=("softmax", "sigmoid"), **kw)
  b0, b1 = mixed.stack.blocks
  assert (b0.attention.mechanism, b1.attention.mechanism) == ("softmax", "sigmoid")
  assert dict(b0.attention.core_kwargs) == {}  # kwargs belong to attention.mechanism only
  assert dict(b1.attention.core_kwargs) == {"sigmoid_bias": -1.0}
  # Same parameters as the all-sigmoid model; the mixed stack is (softmax block 0, sigmoid
  # block 1), i.e. the all-sigmoid model with its first layer switched to softmax.
  sig = model_of(**kw)
  chex.assert_trees_all_equal(nnx.state(mixed, nnx.Param), nnx.state(sig, nnx.Param))
  toks = tokens()
  x, pos = embed(mixed, toks)
  want = head(mixed, sig.stack.blocks[1](b0(x, positions=pos), positions=pos))
  got = mixed(toks)
  chex.assert_trees_all_close(got, want, rtol=1e-7, atol=1e-5)
  assert not np.allclose(got, sig(toks), atol=1e-3)


def test_interleave_validation():
  with pytest.raises(ValueError, match="one name per layer: num_layers=2, got 1"):
    model_of(attention__layer_mechanisms=("softmax",))
  with pytest.raises(ValueError, match=r"unknown mechanism\(s\) \['mixer_typo'\]; valid"):
    model_of(attention__layer_mechanisms=("softmax", "mixer_typo"))
