"""Autoregressive generation from a ``DecoderLM`` with its KV cache: ``generate``.

One jit-compiled program per (model structure, prompt shape, ``max_new_tokens``, ``top_k``,
greedy/sampling, ``eos_id``, ``pad_id``): the prompt is prefilled into a fresh KV cache, then a
``jax.lax.while_loop`` decodes one token per step. Temperature, the prompt values, the prompt
lengths and the PRNG key are traced, so changing them does not recompile.

The caller's model is never mutated: the loop runs on ``nnx.merge`` of a split copy of its
state, with its own cache of length ``P + max_new_tokens``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Int

Array = jax.Array


def _is_int(x: Any) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _choose(logits: Array, key: Any, temperature: Array, *, sample: bool,
            top_k: int | None) -> Array:
  """Next token ``[B]`` int32 from ``logits [B, V]``: argmax, or a top-k softmax sample."""
  if not sample:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k is not None and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "prefill",
                                              "sample", "top_k", "eos_id", "pad_id"))
def _generate_jit(state: Any, prompt: Array, lengths: Array, temperature: Array, rng: Any, *,
                  graphdef: Any, max_new_tokens: int, prefill: int, sample: bool,
                  top_k: int | None, eos_id: int | None, pad_id: int) -> Array:
  b, p = prompt.shape
  n = p + max_new_tokens
  model = nnx.merge(graphdef, state)
  model.init_cache(b, n)
  gd, st = nnx.split(model)
  buf = jnp.full((b, n), pad_id, jnp.int32).at[:, :p].set(prompt.astype(jnp.int32))

  def write(j, logits, buf, done):
    """Token for position ``j`` of every row: prompt (teacher forcing), generated, or pad."""
    key = None if rng is None else jax.random.fold_in(rng, j)
    cand = _choose(logits, key, temperature, sample=sample, top_k=top_k)
    in_prompt = j < lengths
    gen_idx = j - lengths  # index of the generated token written at j (when >= 0)
    forced = jax.lax.dynamic_index_in_dim(buf, j, axis=1, keepdims=False)
    tok = jnp.where(in_prompt, forced, jnp.where(done, pad_id, cand))
    finished = gen_idx >= max_new_tokens - 1
    if eos_id is not None:
      finished = finished | (tok == eos_id)
    done = done | (~in_prompt & finished)
    buf = jax.lax.dynamic_update_index_in_dim(buf, tok, j, axis=1)
    return buf, done

  logits = model(buf[:, :prefill], decode=True)[:, -1]
  _, st = nnx.split(model)
  buf, done = write(prefill, logits, buf, jnp.zeros((b,), bool))

  def cond(carry):
    i, _, _, done = carry
    return (i < n - 1) & ~jnp.all(done)

  def body(carry):
    i, st, buf, done = carry
    m = nnx.merge(gd, st)
    tok = jax.lax.dynamic_slice_in_dim(buf, i, 1, axis=1)
    logits = m(tok, decode=True)[:, -1]
    _, st = nnx.split(m)
    buf, done = write(i + 1, logits, buf, done)
    return i + 1, st, buf, done

  _, _, buf, _ = jax.lax.while_loop(cond, body, (jnp.asarray(prefill, jnp.int32), st, buf, done))
  return buf


def generate(model: nnx.Module, prompt: Int[Array, "B P"], max_new_tokens: int, *,
             temperature: float = 0.0, top_k: int | None = None, rng: Any = None,
             prompt_lengths: Int[Array, "B"] | None = None, eos_id: int | None = None,
             pad_id: int = 0) -> Int[Array, "B P+N"]:
  """Generate ``max_new_tokens`` tokens after each prompt with the model's KV cache.

  Args:
    model: a decoder with ``init_cache(batch, max_len)`` and ``model(tokens, decode=True)``
      returning logits ``[B, T, vocab]`` (``DecoderLM``, any attention mechanism that supports
      decoding). Not mutated: generation runs on a copy of its state with a fresh cache.
    prompt: int ``[B, P]``. With ``prompt_lengths``, rows are right-padded to ``P`` (the values
      after a row's length are ignored).
    max_new_tokens: N >= 1 tokens generated per row.
    temperature: 0 = greedy (argmax); > 0 samples from ``softmax(logits / temperature)``.
    top_k: when sampling, keep only the ``top_k`` largest logits (None = all; values above the
      vocabulary size keep all). Ignored when greedy.
    rng: a JAX PRNG key, required when ``temperature > 0``; step ``j`` uses
      ``fold_in(rng, j)``, so a fixed key gives a fixed output.
    prompt_lengths: int ``[B]`` in ``[1, P]``: row ``b``'s prompt is ``prompt[b, :len_b]``
      (None = every row has length P).
    eos_id: a row stops at its first generated ``eos_id`` (kept); its later tokens are
      ``pad_id``.
    pad_id: the padding token of the output.

  Returns:
    int32 ``[B, P + N]``. Row ``b`` is ``prompt[b, :len_b]``, then its (up to) N generated
    tokens, then ``pad_id`` up to length ``P + N`` (``P - len_b`` pads, more after an EOS).

  Ragged rows are decoded together from position 0, one token per step, with the prompt token
  forced while ``j < len_b`` (teacher forcing through the cache); equal-length prompts are
  prefilled in one call. Learned positions need ``P + N <= model.max_len``.
  """
  prompt = jnp.asarray(prompt)
  if prompt.ndim != 2 or prompt.shape[0] < 1 or prompt.shape[1] < 1:
    raise ValueError(f"prompt must have shape [batch, length] with batch, length >= 1, got "
                     f"{prompt.shape}")
  if not jnp.issubdtype(prompt.dtype, jnp.integer):
    raise TypeError(f"prompt must be an integer array, got dtype {prompt.dtype}")
  b, p = prompt.shape
  if not _is_int(max_new_tokens) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
  max_new_tokens = int(max_new_tokens)
  if not callable(getattr(model, "init_cache", None)):
    raise ValueError(f"{type(model).__name__} has no init_cache: generate needs a decoder "
                     "with a KV cache (e.g. DecoderLM)")
  embedder = getattr(model, "embedder", None)
  max_len = getattr(model, "max_len", None)
  if getattr(embedder, "position", None) == "learned" and max_len is not None \
      and p + max_new_tokens > max_len:
    raise ValueError(f"prompt length {p} + max_new_tokens {max_new_tokens} exceeds the "
                     f"model's max_len {max_len} (learned position embeddings)")
  try:
    temperature = float(temperature)
  except (TypeError, ValueError):
    raise ValueError(f"temperature must be a float >= 0, got {temperature!r}") from None
  if not math.isfinite(temperature) or temperature < 0:
    raise ValueError(f"temperature must be a finite float >= 0, got {temperature}")
  if top_k is not None and (not _is_int(top_k) or top_k < 1):
    raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
  sample = temperature > 0
  if sample and rng is None:
    raise ValueError("sampling (temperature > 0) needs a PRNG key: pass rng=jax.random.key(0)")
  vocab = getattr(model, "vocab_size", None)
  for name, tok in (("eos_id", eos_id), ("pad_id", pad_id)):
    if tok is not None and (not _is_int(tok) or tok < 0 or (vocab is not None and tok >= vocab)):
      raise ValueError(f"{name} must be a token id in [0, {vocab}), got {tok!r}")
  if prompt_lengths is None:
    lengths, prefill = jnp.full((b,), p, jnp.int32), p
  else:
    lengths = jnp.asarray(prompt_lengths)
    if lengths.shape != (b,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
      raise ValueError(f"prompt_lengths must be an int array of shape [{b}], got "
                       f"{lengths.dtype} {lengths.shape}")
    if not isinstance(lengths, jax.core.Tracer):
      lo, hi = int(jnp.min(lengths)), int(jnp.max(lengths))
      if lo < 1 or hi > p:
        raise ValueError(f"prompt_lengths must be in [1, {p}] (the padded prompt length), got "
                         f"values in [{lo}, {hi}]")
    lengths, prefill = lengths.astype(jnp.int32), 1
  graphdef, state = nnx.split(model)
  return _generate_jit(
      state, prompt, lengths, jnp.asarray(temperature if sample else 1.0, jnp.float32),
      rng if sample else None, graphdef=graphdef, max_new_tokens=max_new_tokens,
      prefill=prefill, sample=sample, top_k=int(top_k) if sample and top_k is not None else None,
      eos_id=None if eos_id is None else int(eos_id), pad_id=int(pad_id))
