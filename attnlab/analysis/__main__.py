r"""``python -m attnlab.analysis <method> --checkpoint DIR | --workdir DIR [options]``.

Loads a Hugging Face folder (``--checkpoint``, ``attnlab.models.from_pretrained``) or the
newest checkpoint of an attnlab training run (``--workdir``), runs one method of
``attnlab.analysis.methods`` (or a toolkit view) and writes ``OUT/<method>.json`` and
``OUT/<method>.png`` (``--out``, default ``DIR/analysis``).

Inputs: for a workdir trained on a synthetic task (MQAR, copying, ...) the validation
examples, with the answer positions as the positions that count; otherwise (and with
``--inputs repeated``) ``[BOS, r_1..r_n, r_1..r_n]`` random repeated sequences with the second
copy counting. ``--implementation`` runs the model's attention with xla, chunked or pallas.

Methods: pattern, induction, retrieval, sinks, ablation, redundancy, lens, zerotuning,
headhunter, influence, probes.

  python -m attnlab.analysis induction --checkpoint tests/fixtures/hf/llama --out /tmp/a
  python -m attnlab.analysis retrieval --workdir /tmp/attnlab_mqar
  python -m attnlab.analysis pattern --workdir /tmp/attnlab_mqar --layer 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Sequence

import numpy as np

METHODS = ("pattern", "induction", "retrieval", "sinks", "ablation", "redundancy", "lens",
           "zerotuning", "headhunter", "influence", "probes")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m attnlab.analysis",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("method", choices=METHODS)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--checkpoint", help="Hugging Face folder (config.json + safetensors)")
  src.add_argument("--workdir", help="attnlab training workdir")
  p.add_argument("--step", type=int, default=None, help="workdir checkpoint step (newest)")
  p.add_argument("--out", default=None, help="output folder (default: <source>/analysis)")
  p.add_argument("--implementation", default=None,
                 help="attention implementation: auto | xla | chunked | pallas")
  p.add_argument("--inputs", choices=("auto", "repeated", "repeated-data"), default="auto",
                 help="auto: the run's synthetic validation data, else repeated random "
                      "tokens; repeated-data: [BOS, w, w] for validation windows w of the "
                      "workdir's data (in-distribution induction inputs)")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq-len", type=int, default=32, help="repeated inputs: total length")
  p.add_argument("--token-range", default="",
                 help="repeated random inputs: LOW,HIGH draws tokens in [LOW, HIGH) (e.g. "
                      "32,127 for printable ASCII bytes); default [3, vocab)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--layer", type=int, default=0, help="pattern: the layer shown")
  p.add_argument("--example", type=int, default=0, help="pattern: the batch row shown")
  p.add_argument("--mode", default="zero", help="ablation: zero | mean | uniform")
  p.add_argument("--top-k", type=int, default=3, help="headhunter / influence heads")
  p.add_argument("--random-draws", type=int, default=20,
                 help="retrieval: random head sets per k for the random-ablation baseline")
  p.add_argument("--sequence", default="",
                 help="induction: comma-separated token ids of an ordinal sequence for the "
                      "successor score")
  return p


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
  from attnlab.analysis import loading  # pylint: disable=g-import-not-at-top
  if args.checkpoint:
    return loading.load_checkpoint(args.checkpoint, implementation=args.implementation or "auto")
  return loading.load_workdir(args.workdir, step=args.step, implementation=args.implementation)


def _inputs(model: Any, info: dict[str, Any], args: argparse.Namespace
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
  """``(tokens [B, T], targets [B, T] next tokens (-1: none), mask [B, T] positions that
  count, description)``."""
  from attnlab.analysis.methods import induction  # pylint: disable=g-import-not-at-top
  data = info.get("data")
  if args.inputs == "auto" and data is not None and data.get("name") in (
      "mqar", "copying", "selective_copying"):
    from attnlab import data as data_lib  # pylint: disable=g-import-not-at-top
    ds = data_lib.source_dataset(data, "validation")
    rows = [ds[i] for i in range(min(args.batch, len(ds)))]
    tokens = np.stack([r["inputs"] for r in rows]).astype(np.int32)
    targets = np.stack([r["targets"] for r in rows]).astype(np.int32)
    mask = np.stack([r["weights"] for r in rows]) > 0
    return tokens, targets, mask, f"{data['name']} validation examples (answer positions count)"
  half = max(2, (args.seq_len - 1) // 2)
  if model.embedder.position == "learned":
    half = min(half, (model.max_len - 1) // 2)
  if args.inputs == "repeated-data":
    if data is None:
      raise ValueError("--inputs repeated-data needs --workdir (the run's data)")
    from attnlab import data as data_lib  # pylint: disable=g-import-not-at-top
    ds = data_lib.source_dataset(data, "validation")
    step = max(1, len(ds) // args.batch)
    rows = np.stack([ds[(i * step) % len(ds)]["inputs"][:half] for i in range(args.batch)])
    tokens = np.concatenate([np.zeros((args.batch, 1), rows.dtype), rows, rows], 1)
    tokens = tokens.astype(np.int32)
  else:
    low, high = _token_range(args.token_range, model.vocab_size)
    tokens = induction.repeated_tokens(high, args.batch, half, seed=args.seed, low=low)
  mask = np.zeros(tokens.shape, bool)
  mask[:, half + 1:2 * half] = True
  targets = np.concatenate([tokens[:, 1:], np.full((len(tokens), 1), -1, np.int32)], axis=1)
  what = "validation windows w"
  if args.inputs != "repeated-data":
    what = "random sequences (tokens in [%d, %d))" % _token_range(args.token_range,
                                                                  model.vocab_size)
  return tokens, targets, mask, (f"repeated {what} [BOS, r_1..r_{half}, r_1..r_{half}] "
                                 "(second copy counts)")


def _token_range(spec: str, vocab: int) -> tuple[int, int]:
  """``--token-range LOW,HIGH`` -> ``(low, high)`` within ``[0, vocab]``; default [3, vocab)."""
  if not spec:
    return min(3, vocab - 1), vocab
  try:
    low, high = (int(x) for x in spec.split(","))
  except ValueError:
    raise ValueError(f"--token-range must be LOW,HIGH (integers), got {spec!r}") from None
  if not 0 <= low < high - 1 < vocab:
    raise ValueError(f"--token-range needs 0 <= LOW < HIGH - 1 and HIGH <= vocab_size "
                     f"({vocab}), got {spec!r}")
  return low, high


def _accuracy(logits: Any, targets: np.ndarray, mask: np.ndarray) -> float:
  """Next-token accuracy over the positions of ``mask``."""
  pred = np.asarray(logits).argmax(-1)
  return float(((pred == targets) & mask).sum() / max(mask.sum(), 1))


def _loss_metric(targets: np.ndarray, mask: np.ndarray) -> Callable[[Any], float]:
  """Mean next-token cross-entropy over the positions of ``mask``."""
  safe = np.where(targets < 0, 0, targets)

  def metric(logits):
    lp = np.asarray(logits, np.float64)
    lp = lp - lp.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(lp, safe[..., None], -1)[..., 0]
    return float((nll * mask).sum() / max(mask.sum(), 1))
  return metric


def run_method(method: str, model: Any, tokens: np.ndarray, targets: np.ndarray,
               mask: np.ndarray, args: argparse.Namespace, png: str) -> dict[str, Any]:
  """Run ``method``; write its plot to ``png``; return its JSON-able result."""
  from attnlab import analysis  # pylint: disable=g-import-not-at-top
  from attnlab.analysis import lens, methods, plots  # pylint: disable=g-import-not-at-top
  n = model.num_layers
  if method == "pattern":
    if not 0 <= args.layer < n:
      raise ValueError(f"--layer must be in [0, {n}), got {args.layer}")
    _, cache = analysis.run_with_cache(model, tokens, names=[f"pattern.{args.layer}"])
    w = np.asarray(cache[f"pattern.{args.layer}"])[args.example]
    plots.pattern_heatmap(w, png, labels=[str(t) for t in tokens[args.example]],
                          title=f"layer {args.layer}")
    return {"layer": args.layer, "example": args.example,
            "tokens": tokens[args.example].tolist(), "pattern": w.tolist()}
  if method == "induction":
    half = (tokens.shape[1] - 1) // 2
    rep = tokens if args.inputs != "auto" or tokens.shape[1] == 1 + 2 * half and (
        tokens[:, 1:1 + half] == tokens[:, 1 + half:]).all() else methods.repeated_tokens(
            _token_range(args.token_range, model.vocab_size)[1], args.batch,
            max(2, (args.seq_len - 1) // 2), seed=args.seed,
            low=_token_range(args.token_range, model.vocab_size)[0])
    s = methods.induction_scores(model, rep)
    out = {"induction_scores": s.tolist(), "top_heads": _top(s, args.top_k)}
    if args.sequence:
      seq = [int(x) for x in args.sequence.split(",")]
      out["successor_scores"] = methods.successor_scores(model, seq).tolist()
    plots.head_scores(s, png, title="induction score")
    return out
  if method == "retrieval":
    s = methods.retrieval_scores(model, tokens, mask)
    order = _top(s, n * model.stack.num_heads)
    base = analysis.run(model, tokens)
    out = {"retrieval_scores": s.tolist(), "ranking": order,
           "accuracy": _accuracy(base, targets, mask)}
    # Zero-ablate the k best / k worst ranked heads together (k = 1..8), one compilation.
    for name, ranked in (("top", order), ("bottom", order[::-1])):
      accs = []
      for k in range(1, min(8, len(ranked)) + 1):
        w = np.zeros((n, model.stack.num_heads), np.float32)
        for head in ranked[:k]:
          w[tuple(head)] = 1.0
        logits = analysis.run(model, tokens, edits=methods.ablation_edits(model, w))
        accs.append(_accuracy(logits, targets, mask))
      out[f"accuracy_without_{name}_head"] = accs[0]
      out[f"accuracy_without_{name}_k_heads"] = accs
    out.update(_retrieval_baselines(model, tokens, targets, mask, s, args.seed,
                                    draws=args.random_draws))
    plots.head_scores(s, png, title="retrieval (copy-paste) score")
    return out
  if method == "sinks":
    sc = methods.sink_scores(model, tokens)
    plots.head_scores(sc["first_token"], png, title="attention to the first token")
    return {"first_token": sc["first_token"].tolist(),
            "sink_heads": [list(h) for h in methods.sink_heads(sc)],
            "sink_positions": {f"{i}.{j}": np.nonzero(sc["is_sink"][i, j])[0].tolist()
                               for i in range(n) for j in range(model.stack.num_heads)}}
  if method == "ablation":
    res = methods.ablation_sweep(model, tokens, _loss_metric(targets, mask),
                                  mode=args.mode)
    plots.head_scores(res["delta"], png, title=f"loss change, {args.mode} ablation")
    return {"base_loss": res["base"], "delta": res["delta"].tolist(), "mode": args.mode}
  if method == "redundancy":
    red = methods.layer_redundancy(model, tokens)
    plots.line_plot(np.stack([red["attention"], red["mlp"], red["block"]]), png,
                    labels=["attention", "mlp", "block"], ylabel="1 - cos(in, out)",
                    title="layer importance")
    return {k: v.tolist() for k, v in red.items()}
  if method == "lens":
    counted = np.nonzero(mask[0] & (targets[0] >= 0))[0]
    pos = int(counted[-1]) if len(counted) else tokens.shape[1] - 2
    answers = targets[:, pos]
    out = methods.answer_emergence(model, tokens[:, :pos + 1], answers)
    lp = out["logprob"].mean(1)
    plots.line_plot(lp, png, xlabel="layer (0 = embeddings)", ylabel="answer log-prob",
                    title="logit lens")
    dla = lens.direct_logit_attribution(model, tokens[:, :pos + 1], answers)
    return {"position": pos, "logprob": out["logprob"].tolist(), "rank": out["rank"].tolist(),
            "first_top1": out["first_top1"].tolist(),
            "dla_heads": np.asarray(dla["heads"]).mean(-1).tolist(),
            "dla_mlp": np.asarray(dla["mlp"]).mean(-1).tolist()}
  if method == "zerotuning":
    res = methods.zerotuning_search(model, tokens, target_mask=mask[:, :-1])
    plots.head_scores(res["gammas"], png, title="ZeroTuning gamma per head")
    return {"gammas": res["gammas"].tolist(), "base_loss": res["base"],
            "tuned_loss": res["tuned"], "grid": res["grid"]}
  if method == "headhunter":
    pos = np.nonzero(mask.any(0))[0].tolist() or None
    res = methods.head_hunter(model, tokens, methods.kl_objective(pos), k=args.top_k)
    plots.head_scores(np.nan_to_num(res["first_round"]), png,
                      title="SoftPAG KL per head (round 1)")
    return {"selected": [list(h) for h in res["selected"]], "gains": res["gains"],
            "first_round": np.nan_to_num(res["first_round"]).tolist()}
  if method == "influence":
    heads = _top(methods.retrieval_scores(model, tokens, mask), args.top_k)
    rng = np.random.default_rng(args.seed)
    shuffled = np.stack([np.concatenate([r[:1], rng.permutation(r[1:])]) for r in tokens])
    examples = np.concatenate([tokens, shuffled])
    res = methods.attention_influence(model, examples, heads,
                                      batch_size=min(16, len(examples)))
    plots.line_plot(res["score"], png, xlabel="example (first half: original, second: "
                    "shuffled)", ylabel="relative loss increase", title="AttentionInfluence")
    return {"heads": heads, "score": res["score"].tolist(),
            "selected": methods.select(res["score"], len(tokens)).tolist()}
  if method == "probes":
    labels = (tokens[:, -1] < model.vocab_size // 2).astype(np.int32)
    res = methods.probe_layers(model, tokens, labels)
    plots.line_plot(np.stack([res["train_acc"], res["test_acc"]]), png,
                    labels=["train", "test"], xlabel="layer (0 = embeddings)",
                    ylabel="accuracy", title="probe: last token < vocab/2")
    return {k: v.tolist() for k, v in res.items()}
  raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")


def _retrieval_baselines(model: Any, tokens: np.ndarray, targets: np.ndarray,
                         mask: np.ndarray, scores: np.ndarray, seed: int,
                         draws: int = 20) -> dict[str, Any]:
  """What the ranking is compared with: recall accuracy with each head alone zero-ablated
  (``[L, H]``), with ``k`` random heads ablated (mean over ``draws`` draws, k = 1..8; the
  control of "Retrieval Head Mechanistically Explains Long-Context Factuality", arXiv
  2404.15574), and per layer the accuracy without its top / bottom ranked head."""
  from attnlab import analysis  # pylint: disable=g-import-not-at-top
  from attnlab.analysis import methods  # pylint: disable=g-import-not-at-top
  n, h = scores.shape

  def acc_without(heads: Any) -> float:
    w = np.zeros((n, h), np.float32)
    for head in heads:
      w[tuple(head)] = 1.0
    logits = analysis.run(model, tokens, edits=methods.ablation_edits(model, w))
    return _accuracy(logits, targets, mask)

  each = np.array([[acc_without([(i, j)]) for j in range(h)] for i in range(n)])
  rng = np.random.default_rng(seed)
  flat = [(i, j) for i in range(n) for j in range(h)]
  random_k = []
  for k in range(1, min(8, n * h) + 1):
    picks = [rng.choice(len(flat), k, replace=False) for _ in range(draws)]
    random_k.append(float(np.mean([acc_without([flat[x] for x in p]) for p in picks])))
  within = []
  for i in range(n):
    order = np.argsort(-scores[i], kind="stable")
    within.append({"layer": i, "top_head": int(order[0]), "bottom_head": int(order[-1]),
                   "accuracy_without_top": float(each[i, order[0]]),
                   "accuracy_without_bottom": float(each[i, order[-1]])})
  return {"accuracy_without_each_head": each.tolist(),
          "accuracy_without_random_k_heads": random_k, "random_draws": draws,
          "within_layer": within}


def _top(scores: Any, k: int) -> list[list[int]]:
  from attnlab.analysis.methods._common import top_heads  # pylint: disable=g-import-not-at-top
  return [list(h) for h in top_heads(scores, k)]


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  model, info = _load(args)
  tokens, targets, mask, described = _inputs(model, info, args)
  source = args.checkpoint or args.workdir
  out_dir = args.out or os.path.join(source, "analysis")
  os.makedirs(out_dir, exist_ok=True)
  png = os.path.join(out_dir, f"{args.method}.png")
  result = run_method(args.method, model, tokens, targets, mask, args, png)
  impl = model.stack.blocks[0].attention.implementation
  record = {"method": args.method, "source": info["source"], "step": info.get("step"),
            "implementation": impl, "inputs": described, "shape": list(tokens.shape),
            "result": result, "plot": png}
  path = os.path.join(out_dir, f"{args.method}.json")
  with open(path, "w") as f:
    json.dump(record, f, indent=1)
  print(f"wrote {path} and {png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
