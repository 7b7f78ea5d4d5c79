"""The routed block-sparse ("chunked") paths of ``core/mechanisms/_grid.py`` (biformer, vmoba,
MoBA token routing), which evaluate the mask one batch element at a time
(``_grid.mask_for_batch``), with a FunctionMask that differs per batch element: each example
must get its own mask (axial and halo evaluate it over the whole batch and are not at risk).
Reference: the mechanism's "xla" implementation, which evaluates the mask densely over the
whole batch (``FunctionMask.allowed``, checked against numpy in test_masks.py). Document ids
are a concrete numpy array closed over by the mask function, the case that used to evaluate
batch 0's mask for every example."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from attnlab import masks

from contract import FAST_COMPILE, make_qkv, pair_geometry
from numeric_checks import assert_close

GRID_MECHANISMS = ("biformer", "vmoba", "moba")


def _docs(b, t):
  """[B, T] document ids, a different split per example."""
  return np.stack([np.arange(t) // (3 + 4 * i) for i in range(b)]).astype(np.int32)


@pytest.mark.parametrize("mechanism", GRID_MECHANISMS)
def test_each_example_gets_its_own_function_mask(mechanism):
  g, _ = pair_geometry(mechanism, "chunked")
  g = g.replace(b=2, tk=g.tq)  # the routed path is a full pass: Tq == Tk
  q, k, v = make_qkv(g, seed=3)
  docs = jnp.asarray(_docs(g.b, g.tq))
  mask = masks.FunctionMask(lambda b, h, qi, ki: docs[b, qi] == docs[b, ki])
  run = lambda impl: jax.jit(lambda q, k, v: attnlab.attention(  # noqa: E731
      q, k, v, mechanism=mechanism, implementation=impl, mask=mask & masks.CausalMask()),
      compiler_options=FAST_COMPILE)(q, k, v)
  assert_close(run("chunked"), run("xla"))
