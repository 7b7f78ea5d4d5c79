"""Token-aware average pooling (TAP) and the attention diversification loss (ADL).

"Robustifying Token Attention for Vision Transformers" (Guo, Stutz & Schiele, ICCV 2023,
arXiv 2303.11126; code github.com/guoyongcs/TAPADL).

TAP (before attention): each token mixes average poolings of its neighbourhood at
``num_scales`` dilations ``d = 0, 1, ..., S-1`` (``d = 0`` is the token itself) with weights
predicted per token::

    pool_d(x)_i = (x_{i-2d} + x_{i-d} + x_i) / 3          causal 1-D neighbourhood
    pool_d(x)_i = (x_{i-d} + x_i + x_{i+d}) / 3           bidirectional 1-D neighbourhood
    w_i         = softmax(conv2(conv1(x))_i / temperature)  over the S scales
    TAP(x)_i    = sum_d w_{i,d} pool_d(x)_i

Out-of-range or masked neighbours count as zeros (the divisor stays 3, like the paper's
zero-padded ``Unfold`` + mean). ``conv1`` (E -> S) and ``conv2`` (S -> S) have kernel 3 over
positions (causal: offsets 0, 1, 2 to the left; bidirectional: -1, 0, 1) and no bias.

ADL (on the attention weights ``A [B, H, T, T]`` of a layer): with ``Abar`` the head mean and
``a = mean_i Abar_i`` the mean attention row (the anchor), threshold ``tau = threshold / T``::

    Ahat_i = Abar_i * [Abar_i > tau],  ahat = a * [a > tau]
    ADL    = mean_i cos(Ahat_i, ahat)

averaged over the batch (and over layers when several are given). Penalising it spreads each
token's attention away from the few tokens that every row focuses on ("token overfocusing").

Departures: the paper's TAP is 2-D (3x3 dilated windows over the patch grid, a Conv-BN-Conv
predictor); here windows are 1-D, 3 taps, causal for a decoder, and the predictor has no
BatchNorm. TAP is applied to the block's pre-normed attention input (the paper pools before
``norm1``; the block here is unchanged). For causal attention rows the threshold keeps the
paper's ``threshold / T`` with ``T`` the key length. Cosine: ``x.y / (max(|x|, eps)
max(|y|, eps))``, ``eps = 1e-8`` (as ``torch.nn.functional.cosine_similarity``).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from attnlab.core.mechanisms._mixers import check_allowed, check_valid, f32, shift_tokens
from attnlab.core import registry

Array = jax.Array


def neighbour_offsets(dilation: int, causal: bool) -> tuple[int, ...]:
  """Left shifts ``m`` (``x_{i-m}``) of the 3-tap window of one dilation."""
  if dilation == 0:
    return (0,)
  return (0, dilation, 2 * dilation) if causal else (-dilation, 0, dilation)


def _conv(x: Array, w: Array, causal: bool, allowed: Array | None) -> Array:
  """Kernel-3 convolution over positions: ``x [B, T, Cin]``, ``w [3, Cin, Cout]``; tap ``o``
  reads ``x_{i - o}`` (causal) or ``x_{i + o - 1}`` (centred)."""
  out = 0.0
  for o in range(3):
    m = o if causal else 1 - o
    out = out + shift_tokens(x, m, allowed) @ f32(w[o])
  return out


def scale_weights(x: Array, conv1: Array, conv2: Array, *, causal: bool,
                  allowed: Array | None = None, temperature: float = 1.0) -> Array:
  """Per-token softmax weights over the scales, ``[B, T, S]`` float32."""
  b, t, _ = x.shape
  allowed = check_allowed(allowed, b, t, t)
  h = _conv(f32(x), conv1, causal, allowed)
  h = _conv(h, conv2, causal, allowed)
  return jax.nn.softmax(h / jnp.float32(temperature), axis=-1)


def token_aware_average_pool(x: Array, conv1: Array, conv2: Array, *, causal: bool,
                             allowed: Array | None = None, temperature: float = 1.0,
                             return_scale_weights: bool = False):
  """TAP over ``x [B, T, E]`` (see the module docstring).

  Args:
    x: ``[B, T, E]``.
    conv1: ``[3, E, S]`` predictor kernel (``S = num_scales``).
    conv2: ``[3, S, S]`` predictor kernel.
    causal: left-only neighbourhoods and predictor taps (no future position is read).
    allowed: bool ``[B|1, T, T]``; a neighbour ``j`` of ``i`` counts only if ``allowed[i, j]``
      (segment masks of packed sequences, padding).
    temperature: softmax temperature of the scale weights.
    return_scale_weights: also return the weights ``[B, T, S]``.

  Returns:
    ``[B, T, E]`` in x's dtype (and the scale weights).
  """
  b, t, _ = x.shape
  num_scales = conv1.shape[-1]
  if conv2.shape != (3, num_scales, num_scales) or conv1.shape[:2] != (3, x.shape[-1]):
    raise ValueError(f"conv1 must be [3, E={x.shape[-1]}, S] and conv2 [3, S, S], got "
                     f"{conv1.shape} and {conv2.shape}")
  allowed = check_allowed(allowed, b, t, t)
  xf = f32(x)
  w = scale_weights(xf, conv1, conv2, causal=causal, allowed=allowed, temperature=temperature)
  out = 0.0
  for d in range(num_scales):
    offs = neighbour_offsets(d, causal)
    pooled = sum(shift_tokens(xf, m, allowed) for m in offs) / (1.0 if d == 0 else 3.0)
    out = out + w[..., d:d + 1] * pooled
  out = out.astype(x.dtype)
  return (out, w) if return_scale_weights else out


def _cosine(a: Array, b: Array, eps: float = 1e-8) -> Array:
  na = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
  nb = jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
  return jnp.sum(a * b, axis=-1) / (na * nb)


def attention_diversification_loss(weights: Array | Sequence[Array], *,
                                   threshold: float = 2.0,
                                   query_valid: Array | None = None) -> Array:
  """ADL of one layer's attention weights ``[B, H, Tq, Tk]`` (or the mean over a sequence of
  layers), a float32 scalar (see the module docstring).

  ``query_valid [B, Tq]`` (optional) excludes padded query rows from the anchor and the mean.
  """
  if isinstance(weights, (list, tuple)):
    if not weights:
      raise ValueError("weights must be an array or a non-empty sequence of arrays")
    return sum(attention_diversification_loss(w, threshold=threshold, query_valid=query_valid)
               for w in weights) / len(weights)
  weights = f32(weights)
  if weights.ndim != 4:
    raise ValueError(f"weights must have shape [batch, heads, q_len, kv_len], got "
                     f"{weights.shape}")
  b, _, tq, tk = weights.shape
  a = jnp.mean(weights, axis=1)  # [B, Tq, Tk]
  valid = check_valid(query_valid, b, tq)
  vw = jnp.ones((b, tq), jnp.float32) if valid is None else valid.astype(jnp.float32)
  anchor = jnp.sum(a * vw[..., None], axis=1, keepdims=True) / jnp.maximum(
      jnp.sum(vw, axis=1)[:, None, None], 1.0)  # [B, 1, Tk]
  tau = jnp.float32(threshold) / tk
  a_hat = jnp.where(a > tau, a, 0.0)
  anchor_hat = jnp.where(anchor > tau, anchor, 0.0)
  cos = _cosine(a_hat, anchor_hat)  # [B, Tq]
  return jnp.sum(cos * vw) / jnp.maximum(jnp.sum(vw), 1.0)


registry.register_mechanism(
    'tap_adl', kind='module',
    paper='Robustifying Token Attention for Vision Transformers (arXiv 2303.11126)',
    description='attention over token-aware average pooled inputs (per-token softmax mix of '
                'dilated 1-D neighbourhood means) + attention diversification loss (cosine of '
                'thresholded rows to their mean row) sown as aux_loss',
    complexity='O(T^2 d) time, O(T^2) memory (dense reference) (weights materialised for ADL)')
