"""The "triton" driver: GPU (Pallas Triton lowering), CPU interpret mode by default on CPU.

Grid ``(B * H,)``: one program per (batch, head) row walks its chunks in a ``fori_loop``;
the state ``[Da, Dc]`` is the loop carry (registers), chunks are loaded with ``pl.ds``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from attnlab.kernels.linear.kernel import chunk_step


def _body(chunk, num_chunks, has_decay, a_ref, b_ref, c_ref, g_ref, o_ref):
  log_gamma = g_ref[0] if has_decay else None
  da, dc = a_ref.shape[-1], c_ref.shape[-1]

  def step(i, state):
    sl = pl.ds(i * chunk, chunk)
    a = a_ref[0, sl, :].astype(jnp.float32)
    b = b_ref[0, sl, :].astype(jnp.float32)
    c = c_ref[0, sl, :].astype(jnp.float32)
    o, state = chunk_step(a, b, c, state, log_gamma)
    o_ref[0, sl, :] = o.astype(o_ref.dtype)
    return state

  jax.lax.fori_loop(0, num_chunks, step, jnp.zeros((da, dc), jnp.float32))


def run(a, b, c, log_gamma, *, chunk: int, interpret, num_warps: int = 4,
        num_stages: int = 1):
  """``a, b [R, T, Da]``, ``c [R, T, Dc]`` (T a multiple of ``chunk``), ``log_gamma [R]`` or
  None -> ``[R, T, Dc]`` float32."""
  r, t, da = a.shape
  dc = c.shape[-1]
  has_decay = log_gamma is not None
  g = log_gamma if has_decay else jnp.zeros((r,), jnp.float32)
  body = functools.partial(_body, chunk, t // chunk, has_decay)
  row = lambda i: (i, 0, 0)  # noqa: E731
  kw = {}
  if not interpret:
    from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
    kw["compiler_params"] = plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)
  return pl.pallas_call(
      body, grid=(r,),
      in_specs=[pl.BlockSpec((1, t, da), row), pl.BlockSpec((1, t, da), row),
                pl.BlockSpec((1, t, dc), row), pl.BlockSpec((1,), lambda i: (i,))],
      out_specs=pl.BlockSpec((1, t, dc), row),
      out_shape=jax.ShapeDtypeStruct((r, t, dc), jnp.float32), interpret=interpret,
      name="attnlab_linear_chunk_triton", **kw)(a, b, c, g)
