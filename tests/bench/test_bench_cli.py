"""The benchmark CLIs run and write JSON (smoke only: benchmarks are never asserted on)."""

import json

from attnlab.bench import __main__ as bench_main


def _only_json(folder):
  files = list(folder.rglob("*.json"))
  assert len(files) == 1, files
  return json.loads(files[0].read_text())


def test_core_suite_writes_json(tmp_path):
  assert bench_main.main(["core", "--seq", "64", "--runs", "1", "--block", "16",
                          "--out", str(tmp_path)]) == 0
  data = _only_json(tmp_path)
  assert {r["implementation"] for r in data["rows"]} == {"xla", "chunked"}
  assert data["device"]["jax_version"]


def test_mechanisms_suite_writes_json(tmp_path):
  assert bench_main.main(["mechanisms", "--seq", "32", "--runs", "1", "--only", "sigmoid",
                          "--out", str(tmp_path)]) == 0
  data = _only_json(tmp_path)
  assert data["complete"] and data["rows"][0]["mechanism"] == "sigmoid"
  assert "error" not in data["rows"][0], data["rows"][0]


def test_unknown_suite_is_an_error(capsys):
  assert bench_main.main(["nope"]) == 2
  assert "unknown suite 'nope'" in capsys.readouterr().err
