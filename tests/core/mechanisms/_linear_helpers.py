"""Helpers of the linear / recurrent attention tests (one test file per mechanism of
``attnlab/core/linear``): small inputs and the module checks every such mechanism shares --
decoding with the recurrent cache equals the full pass, the state does not grow with
``max_len``, the three forms agree through the module, and the catalogue overrides build a
DecoderLM that trains. The naive per-step references live in each mechanism's test file."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import attnlab.nn

B, T, H, D = 2, 7, 2, 3
E = 16


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def module(name, **kw):
  kw.setdefault("num_kv_heads", 2)
  kw.setdefault("chunk_size", 4)
  return attnlab.nn.get_attention_module(name)(E, 4, rngs=nnx.Rngs(0), **kw)


def x_in(seed=0, t=T):
  return jnp.asarray(np.random.RandomState(seed).standard_normal((B, t, E)), jnp.float32)


def randomize_params(mod, seed=1, scale=0.3):
  """Perturb every parameter (zero-initialised gates would hide mistakes)."""
  rng = np.random.RandomState(seed)
  for _, p in nnx.iter_graph(mod):
    if isinstance(p, nnx.Param):
      p[...] = p[...] + jnp.asarray(rng.standard_normal(p[...].shape) * scale, p[...].dtype)


def check_module(name, **kw):
  """Through the module: decoding 3 + 3 tokens from the recurrent cache (recurrent form)
  equals the full chunked pass (chunk 4 does not divide T = 6); the cache size is independent
  of ``max_len``. (The forms are tied together in tests/core/test_linear_forms.py; the builder
  path trains in tests/test_catalogue.py.)"""
  mod = module(name, **kw)
  randomize_params(mod)
  x = x_in(t=6)
  full = nnx.jit(lambda m, x: m(x))(mod, x)
  mod.init_cache(B, 8)
  small = mod.state_bytes(B)
  step = nnx.jit(lambda m, xs: m(xs, decode=True))
  got = jnp.concatenate([step(mod, x[:, a:a + 3]) for a in (0, 3)], axis=1)  # one compile
  chex.assert_trees_all_close(got, full, rtol=2e-4, atol=2e-5)
  shapes = jax.tree.map(jnp.shape, mod.cache_state.get_value())
  mod.init_cache(B, 4096)
  assert mod.state_bytes(B) == small
  assert jax.tree.map(jnp.shape, mod.cache_state.get_value()) == shapes
  return mod, full
