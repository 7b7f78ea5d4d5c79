"""Router-selected layer skipping (FiRST).

Paper: "FiRST: Finetuning Router-Selective Transformers for Input-Adaptive Latency Reduction"
(Jain, Sharma, Mukherjee, Pal; arXiv 2410.12513). Every routed layer ``l`` has a small router
that reads the layer input and gives the probability of *executing* the layer; a skipped layer
passes its input through unchanged::

    p_l = sigmoid(w_2 . relu(W_1 x + b_1) + b_2)               (per token, from the layer input)
    training:  x_{l+1} = p_l * Layer_l(x) + (1 - p_l) * x      ("soft"; or straight-through:
               g = 1[p_l >= tau] + p_l - stopgrad(p_l) in place of p_l)
    decoding:  x_{l+1} = Layer_l(x) if p_l >= tau else x       (hard, tau = threshold)

FiRST makes the decision per *sequence* from the prompt at prefill and keeps it for every
generated token, which keeps the KV cache consistent (``decode_policy="prefill"``: the prefill
runs every layer and stores ``mean_t p_l >= tau`` per example). The per-token variant
(``decode_policy="token"``) bypasses a layer for exactly the tokens whose router says skip; a
later token that does run the layer attends to *every* earlier position, so the skipped
token's K/V must exist: we still compute the skipped layer's K/V from its input hidden state
(what passes through) and write them to the cache (the approach FiRST discusses for
token-level skipping); only the layer's output for that token is discarded. The FiRST training
loss adds a term that rewards skipping (``skip_regularizer``: the mean execution probability,
to be weighted and added to the LM loss).

Departures: the reference implementation computes a skipped layer and discards its output
(bypass semantics, no latency saving: decisions differ across a batch); the router MLP width
is a config value (the paper's routers are small MLPs; exact sizes differ); routers train with
the model from scratch in our set-up rather than on a frozen pre-trained model with LoRA.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from attnlab.core import registry

Array = jax.Array

TRAIN_GATES = ("soft", "straight_through")
DECODE_POLICIES = ("token", "prefill")


def router_probability(x: Array, w1: Array, b1: Array, w2: Array, b2: Array) -> Array:
  """Execution probability ``sigmoid(relu(x W1 + b1) . w2 + b2)``: ``[B, T, E] -> [B, T]``.

  ``w1 [E, R]``, ``b1 [R]``, ``w2 [R]``, ``b2 []``; float32.
  """
  xf = x.astype(jnp.float32)
  h = jax.nn.relu(xf @ w1.astype(jnp.float32) + b1.astype(jnp.float32))
  return jax.nn.sigmoid(h @ w2.astype(jnp.float32) + b2.astype(jnp.float32))


def hard_gate(p: Array, threshold: float) -> Array:
  """``1.0`` where ``p >= threshold`` (execute), else ``0.0`` (skip)."""
  return (p >= threshold).astype(jnp.float32)


def straight_through_gate(p: Array, threshold: float) -> Array:
  """Forward value ``hard_gate(p)``, gradient of ``p`` (straight-through estimator)."""
  return hard_gate(p, threshold) + p - jax.lax.stop_gradient(p)


def train_gate(p: Array, kind: str, threshold: float) -> Array:
  if kind == "soft":
    return p
  if kind == "straight_through":
    return straight_through_gate(p, threshold)
  raise ValueError(f"router train_gate must be one of {TRAIN_GATES}, got {kind!r}")


def gated_residual(x: Array, y: Array, gate: Array) -> Array:
  """``gate * y + (1 - gate) * x`` with ``gate [B, T]`` (or ``[B, 1]``) per token."""
  g = gate.astype(jnp.float32)[..., None]
  return (x.astype(jnp.float32) + g * (y.astype(jnp.float32) - x.astype(jnp.float32))
          ).astype(y.dtype)


def prefill_decision(p: Array, threshold: float) -> Array:
  """Per-sequence execute decision from the prompt: ``mean_t p >= threshold`` -> ``[B]`` bool."""
  return jnp.mean(p.astype(jnp.float32), axis=-1) >= threshold


def skip_regularizer(probs: list[Array] | tuple[Array, ...]) -> Array:
  """Mean execution probability over routed layers and tokens (add ``weight *`` it to the loss
  to reward skipping)."""
  if not probs:
    return jnp.float32(0.0)
  return jnp.mean(jnp.stack([jnp.mean(p.astype(jnp.float32)) for p in probs]))


registry.register_mechanism(
    'first_router', kind='block',
    paper='FiRST: Finetuning Router-Selective Transformers for Input-Adaptive Latency '
          'Reduction (arXiv 2410.12513)',
    description='per-layer router p = sigmoid(MLP(x)) on the layer input; training x + p '
                '(Layer(x) - x); decoding skips the layer where p < threshold (per token, K/V '
                'still cached; or per sequence from the prompt)',
    complexity="router O(T d r) per layer; skipped layers' output discarded")
