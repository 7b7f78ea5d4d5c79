"""PNG figures (matplotlib, Agg backend): attention-pattern heatmaps and per-head score maps."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def pattern_heatmap(pattern: Any, path: str, *, labels: Sequence[str] | None = None,
                    title: str = "") -> str:
  """Heatmap of attention weights ``[T, S]`` (or ``[H, T, S]``: one panel per head) to a
  PNG at ``path``; rows are queries, columns keys. Returns ``path``."""
  w = np.asarray(pattern, np.float32)
  if w.ndim == 2:
    w = w[None]
  if w.ndim != 3:
    raise ValueError(f"pattern must have shape [T, S] or [H, T, S], got {w.shape}")
  plt = _pyplot()
  h = w.shape[0]
  cols = min(h, 4)
  rows = -(-h // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
  for i, ax in enumerate(axes.flat):
    if i >= h:
      ax.axis("off")
      continue
    ax.imshow(w[i], cmap="viridis", vmin=0.0, vmax=max(float(w[i].max()), 1e-6))
    ax.set_title(f"head {i}" if h > 1 else title, fontsize=9)
    if labels is not None and len(labels) <= 32:
      ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
      ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
  if title and h > 1:
    fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)
  return path


def head_scores(scores: Any, path: str, *, title: str = "", cmap: str = "magma",
                xlabel: str = "head", ylabel: str = "layer") -> str:
  """``[L, H]`` (any 2-D) score map with the values written in the cells. Returns ``path``."""
  s = np.asarray(scores, np.float32)
  if s.ndim == 1:
    s = s[:, None]
  if s.ndim != 2:
    raise ValueError(f"scores must be 1-D or 2-D, got shape {s.shape}")
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(1.0 + 0.6 * s.shape[1], 1.0 + 0.45 * s.shape[0]))
  im = ax.imshow(s, cmap=cmap, aspect="auto")
  if s.size <= 256:
    for (i, j), v in np.ndenumerate(s):
      ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)
  return path


def line_plot(values: Any, path: str, *, title: str = "", xlabel: str = "layer",
              ylabel: str = "", labels: Sequence[str] | None = None) -> str:
  """One line per row of ``values [N, X]`` (or a single ``[X]``). Returns ``path``."""
  v = np.asarray(values, np.float32)
  if v.ndim == 1:
    v = v[None]
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.2))
  for i, row in enumerate(v):
    ax.plot(row, marker="o", label=None if labels is None else labels[i])
  if labels is not None:
    ax.legend(fontsize=7)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)
  return path


def _save(fig: Any, path: str) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fig.savefig(path, dpi=110)
