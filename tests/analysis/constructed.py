"""A hand-built 2-layer DecoderLM whose heads have known roles (the known answers).

Residual layout (d_model 128): token one-hot [0, 16), position one-hot [16, 48), "previous
token" slot [48, 64), output slot [64, 80). Norms are RMSNorm with unit scale, MLPs are zero,
positions are learned (the one-hots), the LM head reads the output slot.

* L0H0, previous-token head: query position p matches key position p - 1; copies the key's
  token into the previous-token slot.
* L0H1, sink head: every query matches only key 0 (values zero).
* L1H0, induction head: query token a matches keys whose previous-token slot holds a (the
  position after an earlier a); copies that token into the output slot, so the model predicts
  repeated sequences.
* L1H1, successor head: attends to its own position, OV maps token a to output a + 1 (weakly).
* L0H2, L0H3, L1H2, L1H3: zero weights (uniform attention, no output).

Sequences start with BOS = 0, which never appears elsewhere.
"""

import numpy as np
from flax import nnx

from attnlab.models import build_model, default_model_config

V, E, H, D, TMAX = 16, 128, 4, 32, 32
TOK, POS, PREV, OUT = 0, 16, 48, 64
PREV_HEAD, SINK_HEAD, INDUCTION_HEAD, SUCCESSOR_HEAD = (0, 0), (0, 1), (1, 0), (1, 1)


def build(implementation="xla"):
  cfg = default_model_config()
  cfg.update(dict(num_layers=2, d_model=E, num_heads=H, head_dim=D, mlp_dim=8, mlp="swiglu",
                  norm="rmsnorm", norm_eps=1e-6, position="learned", max_len=TMAX))
  cfg.attention.implementation = implementation
  model = build_model(cfg, vocab_size=V, rngs=nnx.Rngs(0))
  emb = np.zeros((V, E), np.float32)
  emb[np.arange(V), TOK + np.arange(V)] = 1
  pos = np.zeros((TMAX, E), np.float32)
  pos[np.arange(TMAX), POS + np.arange(TMAX)] = 1
  model.embedder.tokens.embedding[...] = emb
  model.embedder.learned.embed.embedding[...] = pos
  s0, s1 = np.sqrt(E / 2), np.sqrt(E / 3)  # RMSNorm gains at layers 0 and 1
  c = 1.5
  a0, a1 = model.stack.blocks[0].attention, model.stack.blocks[1].attention
  q0, k0, v0, o0 = (np.zeros(x[...].shape, np.float32) for x in (a0.q.kernel, a0.k.kernel,
                                                                  a0.v.kernel, a0.o.kernel))
  h = PREV_HEAD[1]
  for p in range(TMAX - 1):
    q0[POS + p + 1, h, p] = c
    k0[POS + p, h, p] = c
  for a in range(V):
    v0[TOK + a, h, a] = 1.0
    o0[h, a, PREV + a] = 1.0 / s0
  h = SINK_HEAD[1]
  q0[POS:POS + TMAX, h, 0] = c
  k0[POS, h, 0] = c
  q1, k1, v1, o1 = (np.zeros_like(x) for x in (q0, k0, v0, o0))
  h = INDUCTION_HEAD[1]
  for a in range(V):
    q1[TOK + a, h, a] = 2.0
    k1[PREV + a, h, a] = 2.0
    v1[TOK + a, h, a] = 1.0
    o1[h, a, OUT + a] = 4.0 / s1
  h = SUCCESSOR_HEAD[1]
  for p in range(TMAX):
    q1[POS + p, h, p] = c
    k1[POS + p, h, p] = c
  for a in range(V):
    v1[TOK + a, h, a] = 1.0
    o1[h, a, OUT + (a + 1) % V] = 0.5 / s1
  for att, (q, k, v, o) in ((a0, (q0, k0, v0, o0)), (a1, (q1, k1, v1, o1))):
    att.q.kernel[...], att.k.kernel[...] = q, k
    att.v.kernel[...], att.o.kernel[...] = v, o
  for block in model.stack.blocks:
    for lin in (block.mlp.gate, block.mlp.up, block.mlp.wo):
      lin.kernel[...] = np.zeros(lin.kernel[...].shape, np.float32)
  head = np.zeros((E, V), np.float32)
  head[OUT + np.arange(V), np.arange(V)] = 1.0
  model.head.kernel[...] = head
  return model


def repeated(batch=4, half=8, seed=0):
  """``[batch, 1 + 2 * half]``: BOS, then ``half`` distinct random tokens, repeated."""
  rng = np.random.default_rng(seed)
  rows = [rng.permutation(np.arange(1, V))[:half] for _ in range(batch)]
  return np.stack([np.concatenate([[0], r, r]) for r in rows]).astype(np.int32)


def random_tokens(batch=4, length=17, seed=1):
  """BOS then tokens with no repeated bigram structure to copy (i.i.d., may repeat)."""
  rng = np.random.default_rng(seed)
  return np.concatenate([np.zeros((batch, 1), np.int32),
                         rng.integers(1, V, (batch, length - 1)).astype(np.int32)], axis=1)
