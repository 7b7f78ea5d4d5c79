"""Softmax attention, dense reference ("xla" implementation).

"Attention Is All You Need" (arXiv 1706.03762): ``softmax(q k^T * scale + bias) v``. Extras:
soft-capping as in Gemma 2 (arXiv 2408.00118), ALiBi (arXiv 2108.12409). Softmax statistics
are float32 whatever the input dtype. Departure: a query row with no visible key returns zeros
(the paper does not define it; ``jax.nn.dot_product_attention`` returns a uniform average).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Float

from attnlab.core import common
from attnlab.core import masks as masks_lib

Array = jax.Array


def prepare(q, k, v, mask, bias, scale, alibi_slopes, head_mask):
  """Shared validation for the dense-score reference functions."""
  b, tq, tk, h, _, d = common.check_qkv(q, k, v)
  mask = common.check_mask(mask, b)
  bias = common.check_bias(bias, b, h, tq, tk)
  alibi = common.check_head_vector(alibi_slopes, "alibi_slopes", b, h)
  head_mask = common.check_head_vector(head_mask, "head_mask", b, h)
  return mask, bias, common.default_scale(d, scale), alibi, head_mask


def dense_mask(mask: masks_lib.Mask | None, tq: int, tk: int) -> Array | None:
  """``[B|1, 1, Tq, Tk]`` boolean or None."""
  return None if mask is None else mask.dense(tq, tk)[:, None]


def masked_softmax(logits: Array, allowed: Array | None) -> Array:
  """Float32 softmax over the last axis; fully masked rows give zeros.

  A logit of ``-inf`` (e.g. from an additive bias) counts as masked, so a row whose every
  logit is ``-inf`` or masked gives zeros, with zero (finite) gradients, as the chunked and
  Pallas implementations do. NaN logits still propagate.
  """
  ok = ~jnp.isneginf(logits)
  if allowed is not None:
    ok = ok & allowed
  s = jnp.where(ok, logits, jnp.finfo(jnp.float32).min)
  m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
  p = jnp.where(ok, jnp.exp(s - m), 0.0)
  denom = jnp.sum(p, axis=-1, keepdims=True)
  return p / jnp.where(denom == 0.0, 1.0, denom)


def softmax_attention(q: Float[Array, "B Tq H D"], k: Float[Array, "B Tk K D"],
                      v: Float[Array, "B Tk K Dv"], *, mask: masks_lib.Mask | None = None,
                      bias: Array | None = None, scale: float | None = None,
                      softcap: float | None = None, alibi_slopes: Array | None = None,
                      q_offset: Any = 0, head_mask: Array | None = None,
                      return_weights: bool = False, score_mod: Any = None):
  """Dense softmax attention. q ``[B,Tq,H,D]``, k/v ``[B,Tk,K,D]`` -> ``[B,Tq,H,Dv]``.

  ``score_mod(score, batch, head, q_idx, kv_idx) -> score`` (see ``attnlab.attention``) is
  applied to the logits ``[B, H, Tq, Tk]`` after bias and ALiBi, before the mask.
  """
  common.check_score_mod(score_mod)
  mask, bias, scale, alibi, head_mask = prepare(q, k, v, mask, bias, scale, alibi_slopes,
                                                head_mask)
  logits = common.dense_logits(q, k, scale=scale, bias=bias, softcap=softcap, alibi=alibi,
                               q_offset=q_offset)
  logits = common.apply_score_mod(score_mod, logits, q_offset)
  weights = masked_softmax(logits, dense_mask(mask, q.shape[1], k.shape[1]))
  out = common.apply_head_mask(common.weighted_values(weights, v), head_mask).astype(q.dtype)
  return (out, weights) if return_weights else out


# Registration. chunked.py imports this module, so it is imported here, after the functions
# it uses are defined.
from attnlab.core import chunked  # noqa: E402  pylint: disable=g-import-not-at-top
from attnlab.core import registry  # noqa: E402  pylint: disable=g-import-not-at-top


# Forward-mode autodiff: chunked_attention is a jax.custom_vjp, which jax.jvp / jax.jacfwd
# cannot differentiate. chunked_refusal therefore refuses JVP-traced inputs, so "auto" picks
# the dense "xla" path under jvp and implementation="chunked" raises a ValueError saying so.
# jax.linearize (traced like jax.grad) and jvp of a jit-ed function cannot be detected here;
# see chunked.py's module docstring.
def chunked_refusal(*refused: str):
  """A ``supports`` for ``chunked_attention``: refuses ``refused`` keywords (set by the
  mechanism itself, or another mechanism's hyperparameters), any it does not take, and
  forward-mode autodiff (JVP-traced inputs)."""
  def supports(**call: Any) -> str | None:
    bad = sorted(set(call) & set(refused))
    if bad:
      return f"unexpected arguments {bad}"
    reason = registry.unaccepted_kwargs(chunked.chunked_attention, call)
    if reason:
      return reason
    return chunked.forward_mode_reason(
        {n: x for n, x in call.items() if n != "head_mask"})  # head_mask: applied outside
  return supports


registry.register_mechanism(
    "softmax", kind="attention", paper="Attention Is All You Need (arXiv 1706.03762)",
    description="softmax(q k^T * scale + bias) v",
    complexity="O(T^2 d) time, O(T d) memory (chunked/pallas)", kernel="pallas (softmax)",
    implementations={"xla": softmax_attention})
registry.register_implementation("softmax", "chunked", chunked.chunked_attention,
                                 supports=chunked_refusal("normalizer", "sigmoid_bias"))
