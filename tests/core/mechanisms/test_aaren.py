"""aaren (arXiv 2405.13956): the (m, u, w) associative scan against softmax over each prefix
written as a loop, state continuation, and the module's O(1) decoding."""

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.core.mechanisms.aaren import aaren_attention, aaren_scan
from _linear_helpers import B, D, H, T, check_module
from numeric_checks import assert_close, check, rand


def naive(query, k, v):
  """o_t = sum_{i<=t} exp(s_i) v_i / sum_{i<=t} exp(s_i), s_i = query . k_i / sqrt(d)."""
  out = np.zeros(v.shape)
  for b in range(k.shape[0]):
    for h in range(k.shape[2]):
      s = k[b, :, h] @ query[h] / np.sqrt(k.shape[-1])
      for t in range(k.shape[1]):
        p = np.exp(s[:t + 1] - s[:t + 1].max())
        out[b, t, h] = p @ v[b, :t + 1, h] / p.sum()
  return out


def test_matches_naive():
  query, k, v = rand(H, D, seed=1), rand(B, T, H, D, seed=2, scale=3.0), rand(B, T, H, D,
                                                                               seed=3)
  check(aaren_attention, naive, (query, k, v))


def test_state_continues_the_scan():
  s, v = rand(B, T, H, seed=4, scale=5.0), rand(B, T, H, D, seed=5)

  @jax.jit
  def run(s, v):
    full = aaren_scan(s, v)
    a, st = aaren_scan(s[:, :3], v[:, :3], return_state=True)
    b = aaren_scan(s[:, 3:], v[:, 3:], initial_state=st)
    empty = jnp.zeros((B, H, D + 2), jnp.float32)
    return full, jnp.concatenate([a, b], 1), aaren_scan(s, v, initial_state=empty)
  full, split, from_empty = run(s, v)
  assert_close(split, full, rtol=1e-5, atol=1e-6)
  assert_close(from_empty, full, rtol=1e-5, atol=1e-6)


def test_module_decodes_from_its_state():
  check_module("aaren")
