"""Helpers shared by the per-variant tests of this folder (one test file per
``attnlab/core/variants/<name>.py``, holding that variant's core, nn and model tests): random
inputs, tiny models built from a model config, greedy KV-cache decoding, and the check of a
variant's catalogue entry and its ``configs/mechanisms.py`` overrides."""

from __future__ import annotations

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnlab
from attnlab.models import build_model, default_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

# Pure functions.
RTOL, ATOL = 1e-5, 1e-5


def rnd(seed, shape, scale=1.0):
  return np.asarray(jax.random.normal(jax.random.key(seed), shape), np.float64) * scale


def softmax_rows(s):
  p = np.exp(s - s.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


# Models.
V, E, H, M, T, B = 16, 16, 2, 32, 6, 2


def cfg_of(**kw):
  """A tiny model config; ``a__b=v`` sets ``cfg.a.b = v``."""
  cfg = default_model_config()
  cfg.update(dict(num_layers=2, d_model=E, num_heads=H, mlp_dim=M, max_len=16))
  for key, val in kw.items():
    node = cfg
    *parents, leaf = key.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = val
  return cfg


def model_of(seed=0, **kw):
  return build_model(cfg_of(**kw), vocab_size=V, rngs=nnx.Rngs(seed))


def tokens(seed=0, t=T):
  return jax.random.randint(jax.random.key(seed), (B, t), 0, V)


def embed(m, toks):
  pos = jnp.broadcast_to(jnp.arange(toks.shape[1])[None], toks.shape)
  return m.embedder(toks, pos), pos


def head(m, x):
  return m.head(m.final_norm(x)).astype(jnp.float32)


def np_ln(x, mod, eps=1e-6):
  x = np.asarray(x, np.float64)
  mu = x.mean(-1, keepdims=True)
  y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
  return y * np.asarray(mod.scale[...]) + np.asarray(mod.bias[...])


decode_step = nnx.jit(lambda m, tok: m(tok, decode=True))
forward = nnx.jit(lambda m, tok: m(tok))


def greedy_decode(m, prompt, steps):
  """Prefill ``prompt`` then ``steps`` greedy tokens; returns (per-position logits, tokens)."""
  m.init_cache(B, 16)
  logits = [decode_step(m, prompt)]
  seq = prompt
  for _ in range(steps):
    nxt = jnp.argmax(logits[-1][:, -1], -1)[:, None].astype(jnp.int32)
    seq = jnp.concatenate([seq, nxt], 1)
    logits.append(decode_step(m, nxt))
  return jnp.concatenate(logits, 1), seq


# Catalogue entry and config overrides.


@functools.lru_cache(maxsize=None)
def mechanism_configs():
  """``configs/mechanisms.py`` (``OVERRIDES``, ``overrides_for``, ``get_config``)."""
  path = os.path.join(ROOT, "configs", "mechanisms.py")
  spec = importlib.util.spec_from_file_location("attnlab_configs_mechanisms_variants", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def check_block_entry(name):
  """``name`` is a registered block-level entry with a paper (arXiv id) and complete config
  overrides (``model.`` keys that exist and are applied by ``configs/mechanisms.py``); it is not
  callable through ``attnlab.attention``."""
  assert name in attnlab.list_mechanisms("block")
  m = attnlab.get_mechanism(name)
  assert m.kind == "block" and m.paper and "arXiv" in m.paper
  overrides = mechanism_configs().overrides_for(name)
  assert overrides and all(k.startswith("model.") for k in overrides)
  with pytest.raises(ValueError, match=r"\(kind 'block'\) has no pure attention function"):
    attnlab.attention(jnp.ones((1, 2, 1, 4)), jnp.ones((1, 2, 1, 4)), jnp.ones((1, 2, 1, 4)),
                      mechanism=name)
  c = mechanism_configs().get_config(f"{name},local")  # every override names an existing key
  for dotted, val in overrides.items():
    node = c
    for part in dotted.split("."):
      node = node[part]
    assert node == val, (name, dotted)
