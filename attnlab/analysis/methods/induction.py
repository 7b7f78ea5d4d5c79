"""Induction-head and successor-head scores.

* Induction score ("In-context Learning and Induction Heads", Olsson et al., arXiv 2209.11895;
  the prefix-matching score, also used by "Successor Heads", arXiv 2312.09230): on sequences
  ``[BOS, r_1..r_n, r_1..r_n]`` of random tokens, the mean attention a query in the second
  copy pays to the position right after the earlier occurrence of its token (the token it
  should copy). 1 = a perfect induction head; a uniform causal head scores about
  ``1 / (mean prefix length)``.
* Successor score ("Successor Heads: Recurring, Interpretable Attention Heads In The Wild",
  Gould et al., arXiv 2312.09230): push the effective embedding of each element of an ordinal
  sequence (e.g. the tokens of "1".."9", or "Monday".."Sunday") through the head's OV circuit
  and the unembedding, restricted to the sequence's tokens; the score is the fraction of
  elements whose top-1 is the successor. Departures: the effective embedding is
  ``MLP_0(norm(embedding)) + embedding`` when ``mlp0`` (the paper's choice) else the raw
  embedding; the OV output is decoded with the final norm applied to it alone (no residual).
"""

from __future__ import annotations

from typing import Any, Sequence


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attnlab.analysis import lens
from attnlab.analysis.forward import run_with_cache
from attnlab.analysis.methods._common import shape

PAPER = ("In-context Learning and Induction Heads (arXiv 2209.11895); Successor Heads "
         "(arXiv 2312.09230)")


def repeated_tokens(vocab_size: int, batch: int, half: int, *, seed: int = 0, bos: int = 0,
                    low: int = 1) -> np.ndarray:
  """``[batch, 1 + 2 * half]`` int32: ``bos``, then ``half`` random tokens in ``[low,
  vocab)``, repeated once."""
  if half < 2 or batch < 1:
    raise ValueError(f"half must be >= 2 and batch >= 1, got half={half}, batch={batch}")
  rng = np.random.default_rng(seed)
  body = rng.integers(low, vocab_size, (batch, half))
  return np.concatenate([np.full((batch, 1), bos), body, body], axis=1).astype(np.int32)


def induction_scores(model: Any, tokens: Any, *, half: int | None = None) -> np.ndarray:
  """``[L, H]`` induction scores on repeated sequences ``tokens [B, 1 + 2 * half]`` (as
  ``repeated_tokens`` makes them)."""
  tokens = np.asarray(tokens)
  half = (tokens.shape[1] - 1) // 2 if half is None else half
  if tokens.shape[1] != 1 + 2 * half:
    raise ValueError(f"tokens must have shape [B, 1 + 2 * half] = [B, {1 + 2 * half}], got "
                     f"{tokens.shape}")
  _, cache = run_with_cache(model, tokens, names=["pattern"])
  n, h = shape(model)
  q = np.arange(1 + half, 1 + 2 * half)  # second copy
  target = q - half + 1  # the position after the earlier occurrence
  out = np.zeros((n, h), np.float32)
  for i in range(n):
    p = np.asarray(cache[f"pattern.{i}"])  # [B, H, T, T]
    out[i] = p[:, :, q, target].mean(axis=(0, 2))
  return out


@nnx.jit
def _successor_layer(model: Any, block: Any, x: jax.Array, seq: jax.Array) -> jax.Array:
  """``[H]`` successor score of one layer's heads (effective embeddings ``x [S, E]``)."""
  attn = block.attention
  h = attn.num_heads
  xn = block.norm1(x[None]).astype(attn.dtype)
  _, _, v = attn.project_qkv(xn)  # [1, S, K, D]
  v = jnp.repeat(v, h // v.shape[2], axis=2)[0].astype(jnp.float32)  # [S, H, D]
  ov = jnp.einsum("shd,hde->hse", v, attn.o.kernel[...].astype(jnp.float32))
  logits = model.final_norm(ov).astype(jnp.float32) @ lens.unembed_matrix(model)[:, seq]
  top = jnp.argmax(logits[:, :-1], axis=-1)  # [H, S-1]
  return jnp.mean(top == jnp.arange(1, seq.shape[0])[None], axis=-1)


def successor_scores(model: Any, sequence: Sequence[int], *, mlp0: bool = False) -> np.ndarray:
  """``[L, H]`` fraction of ``sequence[:-1]`` whose OV-circuit top-1 (among the sequence's
  tokens) is the next element."""
  seq = jnp.asarray(sequence, jnp.int32)
  if seq.ndim != 1 or seq.shape[0] < 2:
    raise ValueError(f"sequence must be >= 2 token ids, got {sequence!r}")
  x = model.embedder.tokens(seq).astype(jnp.float32)  # [S, E]
  blocks = model.stack.blocks
  if mlp0:
    x = x + blocks[0].mlp(blocks[0].norm2(x[None]))[0].astype(jnp.float32)
  n, h = shape(model)
  out = np.zeros((n, h), np.float32)
  for i, block in enumerate(blocks):
    if block.attention is not None:
      out[i] = np.asarray(_successor_layer(model, block, x, seq))
  return out


