"""The "mosaic" driver: TPU (Pallas Mosaic lowering), tested on CPU in TPU interpret mode.

Grid ``(B * H, T / C)`` with dimension semantics ("parallel", "arbitrary"): the chunk axis
is sequential, each step DMAs one ``[C, D]`` block of a, b, c into VMEM, and the state
``[Da, Dc]`` lives in a float32 VMEM scratch, zeroed on a row's first chunk. The per-row decay
is a scalar-prefetched SMEM operand.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from attnlab.kernels.linear.kernel import chunk_step


def _body(has_decay, g_ref, a_ref, b_ref, c_ref, o_ref, state_ref):
  r, i = pl.program_id(0), pl.program_id(1)

  @pl.when(i == 0)
  def _():
    state_ref[...] = jnp.zeros(state_ref.shape, jnp.float32)

  log_gamma = g_ref[r] if has_decay else None
  o, new = chunk_step(a_ref[0].astype(jnp.float32), b_ref[0].astype(jnp.float32),
                      c_ref[0].astype(jnp.float32), state_ref[...], log_gamma)
  o_ref[0] = o.astype(o_ref.dtype)
  state_ref[...] = new


def run(a, b, c, log_gamma, *, chunk: int, interpret):
  """As ``triton.run``."""
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  r, t, da = a.shape
  dc = c.shape[-1]
  has_decay = log_gamma is not None
  g = log_gamma if has_decay else jnp.zeros((r,), jnp.float32)
  blk = lambda d: pl.BlockSpec((1, chunk, d), lambda i, n, g: (i, n, 0))  # noqa: E731
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(r, t // chunk), in_specs=[blk(da), blk(da), blk(dc)],
      out_specs=blk(dc), scratch_shapes=[pltpu.VMEM((da, dc), jnp.float32)])
  return pl.pallas_call(
      functools.partial(_body, has_decay), grid_spec=grid_spec,
      out_shape=jax.ShapeDtypeStruct((r, t, dc), jnp.float32), interpret=interpret,
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
      name="attnlab_linear_chunk_mosaic")(g, a, b, c)
