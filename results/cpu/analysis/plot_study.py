"""Figures of results/cpu/analysis/NOTES.md from the JSON the analysis CLI wrote.

  python results/cpu/analysis/plot_study.py

* mqar_study/ablation_curves.png: recall accuracy with the k top-ranked / k bottom-ranked /
  k random heads zero-ablated (``accuracy_without_*_k_heads`` of each retrieval.json), one
  panel per model;
* <run>/induction_over_training.png for run in lm_bytes_study, lm_bytes_study_repeats(_all),
  lm_bytes_study_induction: the
  best induction score and mean first-token attention per checkpoint
  (``<run>/steps/<step>/*.json``, written by lm_steps.py).
"""

from __future__ import annotations

import glob
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

HERE = os.path.dirname(os.path.abspath(__file__))


def ablation_curves() -> None:
  runs = sorted(glob.glob(os.path.join(HERE, "mqar_study", "*", "retrieval.json")))
  if not runs:
    return
  fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs), 3.0), squeeze=False)
  for ax, path in zip(axes[0], runs):
    res = json.load(open(path))["result"]
    for key, style in (("top", "o-"), ("bottom", "s-"), ("random", "^--")):
      acc = res[f"accuracy_without_{key}_k_heads"]
      ax.plot(range(1, len(acc) + 1), acc, style, label=f"{key}-ranked" if key != "random"
              else f"random (mean of {res['random_draws']})", ms=4)
    ax.axhline(res["accuracy"], color="gray", lw=0.8)
    ax.set_title(os.path.basename(os.path.dirname(path)), fontsize=9)
    ax.set_xlabel("heads ablated (k)")
    ax.set_ylim(0, 1.02)
  axes[0, 0].set_ylabel("recall accuracy")
  axes[0, -1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(HERE, "mqar_study", "ablation_curves.png"), dpi=110)
  plt.close(fig)


def induction_over_training(run: str) -> None:
  steps_dir = os.path.join(HERE, run, "steps")
  steps = sorted(int(s) for s in os.listdir(steps_dir)) if os.path.isdir(steps_dir) else []
  if not steps:
    return
  series: dict[str, list[float]] = {}
  for step in steps:
    for name in ("induction", "induction_repeated_data", "sinks"):
      path = os.path.join(steps_dir, str(step), f"{name}.json")
      res = json.load(open(path))["result"] if os.path.exists(path) else None
      if res is None:
        value = float("nan")
      elif name == "sinks":
        value = max(max(row) for row in res["first_token"])
      else:
        value = max(max(row) for row in res["induction_scores"])
      series.setdefault(name, []).append(value)
    path = os.path.join(steps_dir, str(step), "icl.json")
    icl = json.load(open(path)) if os.path.exists(path) else None
    series.setdefault("icl", []).append(
        float("nan") if icl is None else icl["loss_first_copy"] - icl["loss_second_copy"])
  fig, ax = plt.subplots(figsize=(4.8, 3.0))
  labels = {"induction": "max induction score (random ASCII)",
            "induction_repeated_data": "max induction score (repeated source)",
            "sinks": "max mean attention to first byte",
            "icl": "loss(1st copy) - loss(2nd copy), nats"}
  for name, values in series.items():
    ax.plot(steps, values, "o-", ms=3, label=labels[name])
  ax.set_xlabel("training step")
  lowest = min((v for vs in series.values() for v in vs if v == v), default=0.0)
  ax.set_ylim(bottom=min(0.0, lowest - 0.05))
  ax.axhline(0.0, color="gray", lw=0.6)
  ax.legend(fontsize=7)
  ax.set_title(run, fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(HERE, run, "induction_over_training.png"), dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  ablation_curves()
  for name in ("lm_bytes_study", "lm_bytes_study_repeats", "lm_bytes_study_repeats_all",
               "lm_bytes_study_induction"):
    induction_over_training(name)
