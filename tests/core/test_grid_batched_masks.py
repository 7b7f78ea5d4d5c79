"""Block-sparse / gathered ("chunked") grid paths (``core/mechanisms/_grid.py``: axial,
biformer, halo, vmoba, MoBA token routing) with a FunctionMask that differs per batch element:
each example must get its own mask. Reference: the mechanism's "xla" implementation, which
evaluates the mask densely over the whole batch (``FunctionMask.allowed``, checked against
numpy in test_masks.py). Document ids are a concrete numpy array closed over by the mask
function, the case that used to evaluate batch 0's mask for every example."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from attnlab import masks

from contract import FAST_COMPILE, Geometry, make_qkv, pair_geometry
from numeric_checks import assert_close

GRID_MECHANISMS = ("axial", "biformer", "halo", "vmoba", "moba")


def _call(mechanism):
  """``(geometry, hyperparameters)``: the contract geometry, or a 6 x 4 grid for the
  mechanisms that need one."""
  if mechanism not in ("axial", "halo"):
    g, _ = pair_geometry(mechanism, "chunked")
    return g.replace(b=2, tk=g.tq), {}  # the gathered path is a full pass: Tq == Tk
  g = Geometry(b=2, tq=24, tk=24, h=2, kh=1, d=8)
  if mechanism == "axial":
    return g, dict(grid_shape=(6, 4), axis=-1)
  rng = np.random.RandomState(0)
  rels = tuple(jnp.asarray(0.5 * rng.standard_normal((5, g.h, g.d)), jnp.float32)
               for _ in range(2))
  return g, dict(grid_shape=(6, 4), block_size=2, halo=1, rel_tables=rels)


def _docs(b, t):
  """[B, T] document ids, a different split per example."""
  return np.stack([np.arange(t) // (3 + 4 * i) for i in range(b)]).astype(np.int32)


@pytest.mark.parametrize("mechanism", GRID_MECHANISMS)
def test_each_example_gets_its_own_function_mask(mechanism):
  g, kw = _call(mechanism)
  q, k, v = make_qkv(g, seed=3)
  docs = jnp.asarray(_docs(g.b, g.tq))
  mask = masks.FunctionMask(lambda b, h, qi, ki: docs[b, qi] == docs[b, ki])
  run = lambda impl: jax.jit(lambda q, k, v: attnlab.attention(  # noqa: E731
      q, k, v, mechanism=mechanism, implementation=impl, mask=mask & masks.CausalMask(),
      **kw), compiler_options=FAST_COMPILE)(q, k, v)
  assert_close(run("chunked"), run("xla"))
