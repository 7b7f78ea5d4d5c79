"""Activation patching and path patching, with one compilation per sweep.

* Activation patching ("Locating and Editing Factual Associations in GPT", arXiv 2202.05262;
  "How to use and interpret activation patching", arXiv 2404.15255): run the clean input with
  one component's activation replaced by its value on a corrupt input, and measure a metric.
* Path patching ("Interpretability in the Wild", arXiv 2211.00593): patch the corrupt output of
  a *sender* head only along its paths into chosen *receivers*: (1) a run on the clean input
  where the sender's z comes from the corrupt run and every other head's z is frozen to its
  clean value, recording the receivers' inputs; (2) a clean run with only the receivers'
  inputs replaced by the recorded ones. Departure: MLPs are recomputed in step 1 (not frozen),
  as in the paper's IOI experiments; receivers are q/k/v of chosen heads or the final residual.

Sweeps build edits for every layer at once and vary only the traced mix masks, so the whole
sweep is one XLA program.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.analysis import hooks as hooks_lib
from attnlab.analysis.forward import run_with_cache
from attnlab.analysis.hooks import Edit

Array = jax.Array
Metric = Callable[[Array], Array]


def logit_diff(position: int, good: Any, bad: Any) -> Metric:
  """Metric: ``logits[:, position, good] - logits[:, position, bad]`` averaged over the batch
  (``good``/``bad``: int ``[B]``)."""
  good, bad = jnp.asarray(good), jnp.asarray(bad)

  def metric(logits: Array) -> Array:
    row = logits[:, position]
    return jnp.mean(jnp.take_along_axis(row, good[:, None], -1)
                    - jnp.take_along_axis(row, bad[:, None], -1))
  return metric


def _num_heads(model: Any) -> int:
  return model.stack.num_heads


def head_patching(model: Any, clean: Array, corrupt: Array, metric: Metric, *,
                  hook: str = "z") -> np.ndarray:
  """``[L, H]`` metric of the clean run with head ``(l, h)``'s ``hook`` ("z" or "q") patched
  from the corrupt run (all positions)."""
  if hook not in ("z", "q"):
    raise ValueError(f"hook must be 'z' or 'q' (per query head), got {hook!r}")
  n, h = model.num_layers, _num_heads(model)
  _, corrupt_cache = run_with_cache(model, corrupt, names=[hook])
  out = np.zeros((n, h), np.float32)
  for layer in range(n):
    for head in range(h):
      mix = np.zeros((n, h), np.float32)
      mix[layer, head] = 1.0
      edits = [Edit(f"{hook}.{i}", value=corrupt_cache[f"{hook}.{i}"],
                    mix=jnp.asarray(mix[i]).reshape(1, 1, h, 1)) for i in range(n)]
      logits, _ = run_with_cache(model, clean, edits=edits)
      out[layer, head] = float(metric(logits))
  return out


def residual_patching(model: Any, clean: Array, corrupt: Array, metric: Metric, *,
                      hook: str = "resid_pre") -> np.ndarray:
  """``[L, T]`` metric with ``hook`` (a ``[B, T, E]`` hook) of layer ``l`` at position ``t``
  patched from the corrupt run (``clean`` and ``corrupt`` of equal shape)."""
  n, t = model.num_layers, clean.shape[1]
  _, corrupt_cache = run_with_cache(model, corrupt, names=[hook])
  out = np.zeros((n, t), np.float32)
  for layer in range(n):
    for pos in range(t):
      mix = np.zeros((n, t), np.float32)
      mix[layer, pos] = 1.0
      edits = [Edit(f"{hook}.{i}", value=corrupt_cache[f"{hook}.{i}"],
                    mix=jnp.asarray(mix[i]).reshape(1, t, 1)) for i in range(n)]
      logits, _ = run_with_cache(model, clean, edits=edits)
      out[layer, pos] = float(metric(logits))
  return out


def path_patch(model: Any, clean: Array, corrupt: Array, metric: Metric, *,
               sender: tuple[int, int], receivers: Sequence[tuple[str, int, int]] | str
               ) -> float:
  """Metric after patching sender head ``(layer, head)`` along its paths into ``receivers``:
  ``[("q"|"k"|"v", layer, head), ...]`` (head = kv head for k/v), or ``"logits"`` (the direct
  path to the unembedding: the final residual)."""
  n, h = model.num_layers, _num_heads(model)
  s_layer, s_head = sender
  _, clean_cache = run_with_cache(model, clean, names=["z"])
  _, corrupt_cache = run_with_cache(model, corrupt, names=[f"z.{s_layer}"])
  if isinstance(receivers, str):
    if receivers != "logits":
      raise ValueError(f"receivers must be a list of (q|k|v, layer, head) or 'logits', got "
                       f"{receivers!r}")
    keys, masks = [f"resid_post.{n - 1}"], {f"resid_post.{n - 1}": 1.0}
  else:
    keys, masks = [], {}
    for kind, layer, head in receivers:
      if kind not in ("q", "k", "v"):
        raise ValueError(f"receiver kind must be q, k or v, got {kind!r}")
      if layer <= s_layer:
        raise ValueError(f"receiver layer {layer} must come after the sender layer {s_layer}")
      key = f"{kind}.{layer}"
      width = h if kind == "q" else model.stack.blocks[layer].attention.num_kv_heads
      m = masks.get(key, jnp.zeros((width,), jnp.float32))
      masks[key] = m.at[head].set(1.0)
      if key not in keys:
        keys.append(key)
  # Step 1: sender from corrupt, all other heads frozen to clean; record receivers.
  edits = []
  for i in range(n):
    if f"z.{i}" not in clean_cache:
      continue
    value = clean_cache[f"z.{i}"]
    if i == s_layer:
      onehot = hooks_lib.head_vector(s_head, h).reshape(1, 1, h, 1)
      value = value * (1 - onehot) + corrupt_cache[f"z.{i}"] * onehot
    edits.append(Edit(f"z.{i}", value=value, mix=1.0))
  _, recorded = run_with_cache(model, clean, names=keys, edits=edits)
  # Step 2: clean run with only the receivers' inputs patched.
  edits2 = []
  for key in keys:
    m = masks[key]
    mix = m if jnp.ndim(m) == 0 else jnp.asarray(m).reshape(1, 1, -1, 1)
    edits2.append(Edit(key, value=recorded[key], mix=mix))
  logits, _ = run_with_cache(model, clean, edits=edits2)
  return float(metric(logits))
