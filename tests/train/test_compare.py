"""python -m attnlab.train.compare: seeds, resume, aggregation, failures, the page's markers."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from attnlab.train import compare
from attnlab.train import trainer

_ROOT = Path(__file__).resolve().parents[2]


def _fake_run(root: Path, name: str, seed: int, accs: dict[int, float], wall: float = 1.0):
  """A finished run's folder: eval records at the given steps (and a train record)."""
  d = root / name / f"seed{seed}"
  d.mkdir(parents=True)
  lines = [{"step": s, "eval/accuracy": a, "eval/loss": 1.0 - a} for s, a in accs.items()]
  lines[1:1] = [{"step": 1, "train/loss": 3.0, "perf/step_time_s": t * (seed + 1)}
                for t in (0.010, 0.090, 0.020)]  # median 20 ms x (seed + 1)
  (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
  (d / "run.json").write_text(json.dumps({"mechanism": name, "seed": seed,
                                          "steps": max(accs), "wall_s": wall}))


def test_aggregate_mean_spread_curve_band_and_order(tmp_path):
  finals = {"softmax": [0.99, 0.97, 1.0], "retnet": [0.2, 0.5, 0.35]}
  for name, accs in finals.items():
    for s, a in enumerate(accs):
      _fake_run(tmp_path, name, s, {0: 0.01, 5: a / 2, 10: a}, wall=10.0 + s)
  # a seed that stopped before the last step is not counted; one that failed is named
  _fake_run(tmp_path, "gla", 0, {0: 0.01, 5: 0.3})
  (tmp_path / "gla" / "seed1").mkdir()
  (tmp_path / "gla" / "seed1" / "error.json").write_text(json.dumps({"error": "boom"}))
  rows = compare.aggregate(tmp_path, ["retnet", "gla", "softmax"], [0, 1, 2], steps=10)
  assert [r["mechanism"] for r in rows] == ["softmax", "retnet", "gla"]
  for r in rows[:2]:
    want = np.array(finals[r["mechanism"]])
    assert r["seeds"] == [0, 1, 2]
    np.testing.assert_allclose([r["mean"], r["std"], r["min"], r["max"]],
                               [want.mean(), want.std(), want.min(), want.max()])
    np.testing.assert_allclose(r["final_eval_loss"], (1 - want).mean())
    assert r["wall_s"] == 11.0
    np.testing.assert_allclose(r["step_ms"], np.mean([20.0, 40.0, 60.0]))
    assert r["curve"]["step"] == [0, 5, 10]
    np.testing.assert_allclose(r["curve"]["mean"], [0.01, want.mean() / 2, want.mean()])
    np.testing.assert_allclose(r["curve"]["min"][1:], [want.min() / 2, want.min()])
    np.testing.assert_allclose(r["curve"]["max"][1:], [want.max() / 2, want.max()])
  gla = rows[2]
  assert "mean" not in gla and gla["failed"] == {1: "boom"} and gla["missing"] == [0, 2]
  lines = compare.table(rows, [0, 1, 2], 10)
  assert any(line.startswith("| `gla` |") and "boom" in line for line in lines)
  assert any(line.startswith("| `softmax` |") and "0.987 | 0.970-1.000" in line
             for line in lines)


def test_summary_markers_keep_the_prose(tmp_path):
  page = tmp_path / "summary.md"
  page.write_text(f"# Page\n\nreading\n\n{compare.START}\nold\n{compare.END}\n\ntail\n")
  compare.write_summary(tmp_path, ["| new |"], "title")
  assert page.read_text() == (f"# Page\n\nreading\n\n{compare.START}\n| new |\n"
                              f"{compare.END}\n\ntail\n")
  fresh = tmp_path / "new"
  fresh.mkdir()
  text = compare.write_summary(fresh, ["| t |"], "title").read_text()
  assert text.startswith("# title") and f"{compare.START}\n| t |\n{compare.END}" in text


def test_order_puts_the_first_ones_first():
  names = ["zeta", "b", "alpha", "a"]
  assert compare.ordered(names, first=("a", "missing", "b")) == ["a", "b", "alpha", "zeta"]
  known = set(compare._configs_module().OVERRIDES) | {"mixer_none"}
  assert set(compare._configs_module().COMPARE_FIRST) <= known


def test_compare_config_variant_reaches_the_mechanisms_config():
  spec = importlib.util.spec_from_file_location("mqar_cfg", _ROOT / "configs" / "mqar.py")
  mqar = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mqar)
  base, small = mqar.get_config(""), mqar.get_config("compare")
  cfg = compare.load_config("gla", "compare")
  for key in ("total_steps", "batch_size", "eval_every", "eval_steps"):
    assert cfg[key] == small[key]
  assert cfg.data.to_dict() == small.data.to_dict()
  assert cfg.model.d_model == small.model.d_model
  assert cfg.model.attention.mechanism == "gla"  # the entry's overrides still apply
  assert small.data.num_queries == 0 and small.data.num_kv_pairs >= 4  # a recall task
  assert small.total_steps < base.total_steps
  with pytest.raises(ValueError, match="compare"):
    compare.load_config("gla", "local,compare")


def test_main_seeds_resume_and_failure_not_fatal(tmp_path, monkeypatch):
  """Two seeds of a tiny softmax run, and a mechanism whose run raises: both reported."""
  work, out = tmp_path / "runs", tmp_path / "page"
  real = compare.run_one

  def run_one(name, workdir, **kw):
    if name == "sigmoid":
      raise RuntimeError("simulated failure")
    return real(name, workdir, **kw)

  monkeypatch.setattr(compare, "run_one", run_one)
  args = ["--workdir", str(work), "--out", str(out), "--config", "local", "--steps", "4",
          "--eval_every", "2", "--seeds", "0", "1", "--names", "softmax", "sigmoid"]
  assert compare.main(args) == 0
  finals = []
  for s in (0, 1):
    d = work / "softmax" / f"seed{s}"
    assert json.loads((d / "config.json").read_text())["seed"] == s
    evals = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    finals.append(evals[-1]["eval/accuracy"])
  summary = json.loads((out / "summary.json").read_text())
  rows = {r["mechanism"]: r for r in summary["rows"]}
  assert rows["softmax"]["seeds"] == [0, 1]
  np.testing.assert_allclose(rows["softmax"]["mean"], np.mean(finals))
  assert set(rows["sigmoid"]["failed"]) == {"0", "1"}  # JSON keys
  assert "simulated failure" in rows["sigmoid"]["failed"]["0"]
  assert (out / "final_accuracy.png").exists() and (out / "curves.png").exists()
  text = (out / "summary.md").read_text()
  assert "| `softmax` |" in text and "simulated failure" in text
  # a second call reuses the finished runs and trains nothing
  stamp = (work / "softmax" / "seed0" / "metrics.jsonl").stat().st_mtime_ns
  monkeypatch.setattr(trainer, "train_and_evaluate",
                      lambda *a, **k: pytest.fail("a finished run was trained again"))
  assert compare.main(args[:-2] + ["softmax"]) == 0
  assert (work / "softmax" / "seed0" / "metrics.jsonl").stat().st_mtime_ns == stamp


def test_a_stopped_run_is_not_marked_done_and_stops_the_comparison(tmp_path, monkeypatch):
  """SIGTERM inside a run: the trainer returns "stopped"; no run.json, no further runs."""
  calls = []

  def stopped(config, workdir, **kw):
    calls.append(workdir)
    return {"status": "stopped", "step": 3}

  monkeypatch.setattr(trainer, "train_and_evaluate", stopped)
  work = tmp_path / "runs"
  assert compare.main(["--workdir", str(work), "--config", "local", "--steps", "4",
                       "--names", "softmax", "sigmoid"]) == 0
  assert len(calls) == 1 and not (work / "softmax" / "seed0" / "run.json").exists()
  rows = json.loads((work / "summary.json").read_text())["rows"]
  assert all("mean" not in r and r["missing"] == [0] for r in rows)


def test_budget_records_are_compared_canonically(tmp_path):
  """budget.json / run.json (also the former compare_grid's grid / local keys) against a
  budget; variant parts in any order are the same variant; missing keys are not compared."""
  want = compare.budget(400, "local,16x16", 50)
  assert want == {"steps": 400, "variant": "16x16,local", "eval_every": 50}
  d = tmp_path / "a"
  d.mkdir()
  assert compare.budget_mismatch(d, want) is None  # no record
  (d / "run.json").write_text(json.dumps({"grid": "16x16", "local": True, "steps": 400,
                                          "eval_every": 50}))
  assert compare.budget_mismatch(d, want) is None
  assert "variant '16x16,local'" in compare.budget_mismatch(d, compare.budget(400, "", 50))
  (d / "budget.json").write_text(json.dumps(compare.budget(400, "16x16,local", 100)))
  assert "eval_every 100" in compare.budget_mismatch(d, want)  # budget.json is read first
  old = tmp_path / "b"
  old.mkdir()  # an early MQAR record: steps only
  (old / "run.json").write_text(json.dumps({"mechanism": "x", "seed": 0, "steps": 400}))
  assert compare.budget_mismatch(old, want) is None
  assert "steps 400" in compare.budget_mismatch(old, compare.budget(10, "", 50))
  bare = tmp_path / "c"
  bare.mkdir()  # no record but the trainer's config.json
  (bare / "config.json").write_text(json.dumps({"total_steps": 1200, "eval_every": 100}))
  assert compare.budget_mismatch(bare, compare.budget(1200, "anything", 100)) is None
  assert "steps 1200 (want 400)" in compare.budget_mismatch(bare, want)


def test_another_budget_in_the_workdir_is_refused_before_any_run(tmp_path, monkeypatch, capsys):
  work = tmp_path / "runs"
  _fake_run(work, "softmax", 0, {0: 0.1, 4: 0.9})
  (work / "softmax" / "seed0" / "budget.json").write_text(
      json.dumps(compare.budget(4, "local", 2)))
  monkeypatch.setattr(trainer, "train_and_evaluate",
                      lambda *a, **k: pytest.fail("trained despite another budget"))
  common = ["--workdir", str(work), "--config", "local", "--names", "softmax", "sigmoid"]
  with pytest.raises(SystemExit):
    compare.main(common + ["--steps", "6", "--eval_every", "2"])
  assert "softmax/seed0: steps 4 (want 6)" in capsys.readouterr().err
  with pytest.raises(SystemExit):  # --report_only too: a table must not mix budgets
    compare.main(common + ["--steps", "4", "--eval_every", "1", "--report_only"])
  assert "eval_every 2 (want 1)" in capsys.readouterr().err
  assert compare.main(common + ["--steps", "4", "--eval_every", "2", "--report_only"]) == 0


@pytest.mark.parametrize("args,match", [
    (["--configs", "no/such/file.py"], "not found"),
    (["--steps", "0"], "--steps and --eval_every must be >= 1"),
    (["--config", "compare", "--local"], "compare")])
def test_bad_arguments_are_one_line_usage_errors(tmp_path, capsys, args, match):
  with pytest.raises(SystemExit):
    compare.main(["--workdir", str(tmp_path), "--names", "softmax"] + args)
  assert match in capsys.readouterr().err


def test_a_configs_file_without_get_config_is_refused(tmp_path, capsys):
  bad = tmp_path / "cfg.py"
  bad.write_text("X = 1\n")
  with pytest.raises(SystemExit):
    compare.main(["--workdir", str(tmp_path), "--configs", str(bad), "--names", "softmax"])
  assert "defines no get_config" in capsys.readouterr().err
