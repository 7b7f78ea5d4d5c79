"""Logit lens and direct logit attribution (DLA).

* Logit lens (nostalgebraist, 2020; "Eliciting Latent Predictions from Transformers with the
  Tuned Lens", arXiv 2303.08112, for the name and its limits): decode every layer's residual
  stream with the model's own final norm and unembedding.
* DLA ("A Mathematical Framework for Transformer Circuits", Elhage et al. 2021): the residual
  stream at the last layer is a sum of components (embeddings, each head's output, each
  attention output bias, each MLP output). With the final norm's scale *frozen* at its value
  on the full residual, the norm is linear, so each component's contribution to a logit is
  ``unembed(frozen_norm(component))``; the contributions plus the norm's bias term sum to the
  logit exactly.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attnlab.analysis.forward import run_with_cache

Array = jax.Array


def unembed_matrix(model: Any) -> Array:
  """``W_U [E, V]`` float32."""
  if model.tie_embeddings:
    return model.embedder.tokens.embedding[...].T.astype(jnp.float32)
  return model.head.kernel[...].astype(jnp.float32)


@nnx.jit
def decode(model: Any, resid: Array) -> Array:
  """Logits ``[..., V]`` float32 of residual vectors ``[..., E]`` (final norm + unembed)."""
  x = model.final_norm(resid)
  if model.tie_embeddings:
    return model.embedder.tokens.attend(x).astype(jnp.float32)
  return model.head(x).astype(jnp.float32)


def logit_lens(model: Any, tokens: Array, *, positions: Sequence[int] | None = None,
               edits: Any = None) -> Array:
  """``[L + 1, B, P, V]`` float32 log-probabilities: decoding of the embeddings, then of each
  layer's ``resid_post`` (the last equals the model's output), at ``positions`` (all when
  None)."""
  logits, cache = run_with_cache(model, tokens, names=["embed", "resid_post"], edits=edits)
  resid = jnp.concatenate([cache["embed"][None], cache.stack("resid_post")], axis=0)
  if positions is not None:
    resid = resid[:, :, jnp.asarray(positions)]
  return jax.nn.log_softmax(decode(model, resid), axis=-1)


def answer_trace(model: Any, tokens: Array, answers: Array, *, position: int = -1,
                 edits: Any = None) -> dict[str, Array]:
  """Per layer, the answer's log-probability and rank under the logit lens ("Anchored
  Answers: Unravelling Positional Bias in GPT-2's Multiple-Choice Questions", arXiv
  2405.03205, traces when the answer emerges). ``answers``: int ``[B]``.
  Returns ``{"logprob": [L+1, B], "rank": [L+1, B]}`` (rank: how many other tokens score at
  least as high; 0 = strict top-1)."""
  lp = np.asarray(logit_lens(model, tokens, positions=[position], edits=edits)[:, :, 0])
  answers = np.asarray(answers)  # lp: [L+1, B, V]
  ans = np.take_along_axis(lp, answers[None, :, None], axis=-1)[..., 0]
  rank = np.sum(lp >= ans[..., None], axis=-1) - 1  # ties count against the answer
  return {"logprob": ans, "rank": rank}


def _frozen_norm(model: Any, final_resid: Any):
  """``(f, bias_term)`` in numpy float64: ``f(c)`` is the final norm made linear by freezing
  its scale on ``final_resid [..., E]``; ``bias_term [..., E]`` its constant part."""
  norm = model.final_norm
  x = np.asarray(final_resid, np.float64)
  eps = float(norm.epsilon)
  scale = np.asarray(norm.scale[...], np.float64)
  if isinstance(norm, nnx.RMSNorm):
    s = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return (lambda c: np.asarray(c, np.float64) * s * scale), np.zeros_like(x)
  if isinstance(norm, nnx.LayerNorm):
    s = 1.0 / np.sqrt(np.var(x, axis=-1, keepdims=True) + eps)
    bias = (np.zeros_like(x) if norm.bias is None
            else np.broadcast_to(np.asarray(norm.bias[...], np.float64), x.shape))

    def f(c):
      c = np.asarray(c, np.float64)
      return (c - np.mean(c, axis=-1, keepdims=True)) * s * scale
    return f, bias
  raise ValueError(f"direct logit attribution needs a LayerNorm or RMSNorm final norm, got "
                   f"{type(norm).__name__}")


def direct_logit_attribution(model: Any, tokens: Array, direction_tokens: Any, *,
                             position: int = -1, baseline_tokens: Any = None,
                             edits: Any = None) -> dict[str, np.ndarray]:
  """Each component's direct contribution to the logit of ``direction_tokens [B]`` (minus
  ``baseline_tokens [B]`` when given) at ``position`` (numpy float64).

  Returns ``{"heads": [L, H, B], "attn_bias": [L, B], "mlp": [L, B], "embed": [B],
  "norm_bias": [B], "total": [B], "logit": [B]}``: ``total`` (the sum of all components)
  equals ``logit`` (the model's logit or logit difference) up to float rounding.
  """
  n = model.num_layers
  names = ["embed", "head_out", "attn_out", "mlp_out", f"resid_post.{n - 1}"]
  logits, cache = run_with_cache(model, tokens, names=names, edits=edits)
  cache = {k: np.asarray(v[:, position], np.float64) for k, v in cache.items()}
  row = np.asarray(logits[:, position], np.float64)
  w = np.asarray(unembed_matrix(model), np.float64)  # [E, V]
  good = np.asarray(direction_tokens)
  d = w[:, good].T  # [B, E]
  logit = np.take_along_axis(row, good[:, None], axis=-1)[:, 0]
  if baseline_tokens is not None:
    bad = np.asarray(baseline_tokens)
    d = d - w[:, bad].T
    logit = logit - np.take_along_axis(row, bad[:, None], axis=-1)[:, 0]
  f, bias = _frozen_norm(model, cache[f"resid_post.{n - 1}"])

  def contrib(c):  # c [..., B, E] -> [..., B]
    return np.sum(f(c) * d, axis=-1)

  head_out = np.stack([cache[f"head_out.{i}"] for i in range(n)])  # [L, B, H, E]
  heads = contrib(np.moveaxis(head_out, 2, 1))  # [L, H, B]
  attn_out = np.stack([cache[f"attn_out.{i}"] for i in range(n)])
  attn_bias = contrib(attn_out - head_out.sum(axis=2))
  mlp = contrib(np.stack([cache[f"mlp_out.{i}"] for i in range(n)]))
  embed = contrib(cache["embed"])
  norm_bias = np.sum(bias * d, axis=-1)
  total = heads.sum((0, 1)) + attn_bias.sum(0) + mlp.sum(0) + embed + norm_bias
  return {"heads": heads, "attn_bias": attn_bias, "mlp": mlp, "embed": embed,
          "norm_bias": norm_bias, "total": total, "logit": logit}
