"""Smoke test of ``python -m attnlab.bench attention --quick`` on CPU."""

import json

from attnlab.bench import attention


def test_quick_bench_writes_json(tmp_path):
  res = attention.main(["--quick", "--seq", "64", "--out", str(tmp_path), "--interpret",
                        "--implementations", "pallas", "xla", "cudnn", "--mode", "fwd",
                        "--causal", "causal", "--runs", "1", "--warmup", "1"])
  data = json.loads(open(res["path"]).read())
  assert data["benchmark"] == "attention" and data["device"]["jax_version"]
  rows = {(r["implementation"], r["normalizer"]): r for r in data["rows"]}
  assert rows[("pallas", "softmax")]["status"] == "ok"
  assert rows[("pallas", "softmax")]["note"] == "interpret"
  assert rows[("xla", "sigmoid")]["status"] == "ok"
  assert rows[("cudnn", "softmax")]["status"] == "skipped"
  ok = rows[("xla", "softmax")]
  assert ok["median_s"] > 0 and ok["tflops"] > 0 and "temp_bytes" in ok


def test_useful_flops_and_target_ratios():
  full = attention.useful_flops(1, 1, 8, 8, 64, False, "fwd")
  assert full == 4 * 64 * 64
  assert attention.useful_flops(1, 1, 8, 8, 64, True, "fwd") == 4 * 36 * 64
  assert attention.useful_flops(1, 1, 8, 8, 64, False, "fwd+bwd") == 3.5 * full
  base = dict(status="ok", seq=8192, head_dim=128, dtype="bfloat16", causal=True)
  rows = [dict(base, implementation="pallas", normalizer="softmax", mode="fwd", median_s=1.0),
          dict(base, implementation="cudnn", normalizer="softmax", mode="fwd", median_s=0.95),
          dict(base, implementation="pallas", normalizer="sigmoid", mode="fwd", median_s=0.8)]
  ratios = {r["name"]: r["ratio"] for r in attention.target_ratios(rows)}
  assert abs(ratios["pallas softmax fwd vs cudnn"] - 0.95) < 1e-9
  assert abs(ratios["pallas sigmoid vs softmax fwd"] - 1.25) < 1e-9
