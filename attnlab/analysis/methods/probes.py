"""Linear probes per layer.

"Exploring Concept Depth: How Large Language Models Acquire Knowledge and Concepts at
Different Layers?" (Jin et al., arXiv 2404.07066) trains a linear classifier on each layer's
representation of the input and reads the depth at which a concept becomes linearly
decodable from the per-layer test accuracy. Here: multinomial logistic regression (L2,
full-batch gradient descent with Adam in JAX) on the residual stream at one position
(``embed``, then each ``resid_post``), features standardised on the training split.
Departure: the paper uses the last token of prompts with scikit-learn's logistic regression.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attnlab.analysis.forward import run_with_cache

PAPER = ("Exploring Concept Depth: How Large Language Models Acquire Knowledge and Concepts "
         "at Different Layers? (arXiv 2404.07066)")


def layer_features(model: Any, tokens: Any, *, position: int = -1) -> np.ndarray:
  """``[L + 1, B, E]`` float32: the embeddings, then each layer's output, at ``position``."""
  _, c = run_with_cache(model, tokens, names=["embed", "resid_post"])
  feats = jnp.concatenate([c["embed"][None], c.stack("resid_post")], 0)[:, :, position]
  return np.asarray(feats, np.float32)


def _fit(x: jax.Array, y: jax.Array, classes: int, steps: int, l2: float, lr: float):
  w = jnp.zeros((x.shape[1], classes))
  b = jnp.zeros((classes,))
  opt = optax.adam(lr)

  def loss(p):
    logits = x @ p[0] + p[1]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + l2 * jnp.sum(p[0] ** 2)

  def step(carry, _):
    p, s = carry
    g = jax.grad(loss)(p)
    u, s = opt.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  params = (w, b)
  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
  return params


_fit_jit = jax.jit(_fit, static_argnames=("classes", "steps"))


def probe_layers(model: Any, tokens: Any, labels: Any, *, position: int = -1,
                 train_fraction: float = 0.5, steps: int = 300, l2: float = 1e-3,
                 lr: float = 0.05, seed: int = 0) -> dict[str, np.ndarray]:
  """``{"train_acc": [L+1], "test_acc": [L+1]}``: a probe per layer (row 0 = embeddings)
  trained on a random ``train_fraction`` of the rows of ``tokens [N, T]`` with ``labels
  [N]`` (ints), tested on the rest."""
  labels = np.asarray(labels)
  tokens = np.asarray(tokens)
  if labels.shape != (tokens.shape[0],):
    raise ValueError(f"labels must have shape [N]=({tokens.shape[0]},), got {labels.shape}")
  if not 0 < train_fraction < 1:
    raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
  feats = layer_features(model, tokens, position=position)
  order = np.random.default_rng(seed).permutation(tokens.shape[0])
  cut = max(1, int(round(train_fraction * len(order))))
  tr, te = order[:cut], order[cut:]
  classes = int(labels.max()) + 1
  out = {"train_acc": [], "test_acc": []}
  for f in feats:
    mu, sd = f[tr].mean(0), f[tr].std(0) + 1e-6
    z = (f - mu) / sd
    w, b = _fit_jit(jnp.asarray(z[tr]), jnp.asarray(labels[tr]), classes, steps, l2, lr)
    pred = np.asarray(jnp.argmax(jnp.asarray(z) @ w + b, -1))
    out["train_acc"].append(float((pred[tr] == labels[tr]).mean()))
    out["test_acc"].append(float((pred[te] == labels[te]).mean()) if len(te) else np.nan)
  return {k: np.asarray(v, np.float32) for k, v in out.items()}
