"""Sigmoid attention: a property of the dense reference not covered by tests/core (its values
against softmax-style references and the chunked/pallas paths are tested there)."""

import chex
import numpy as np

from _helpers import TK, jattn, qkv  # noqa: I100


def test_sigmoid_weights_tend_to_half_and_bias_shifts():
  """sigmoid(q.k * scale + b): with b = 0 and vanishing logits every weight tends to 1/2 (rows
  are not normalised); with b = -log(n) and zero logits each weight is 1 / (1 + n)."""
  q, k, v = qkv(80)
  _, w = jattn(q * 1e-4, k, v, mechanism="sigmoid", sigmoid_bias=0.0,
               implementation="xla", return_weights=True)
  chex.assert_trees_all_close(np.asarray(w), 0.5, rtol=1e-7, atol=1e-4)
  _, w = jattn(np.zeros_like(q), k, v, mechanism="sigmoid", implementation="xla",
               return_weights=True)
  chex.assert_trees_all_close(np.asarray(w), 1.0 / (1.0 + TK), rtol=1e-5)
