"""python -m attnlab.analysis on a Hugging Face folder and on an attnlab training workdir."""

import json
import os
import types

import numpy as np
import pytest

from attnlab.analysis import __main__ as cli

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf")


def read(out, method):
  with open(os.path.join(out, f"{method}.json")) as f:
    record = json.load(f)
  with open(record["plot"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  return record


def test_cli_on_hf_checkpoint(tmp_path):
  out = str(tmp_path)
  ckpt = os.path.join(FIXTURES, "gpt2")
  assert cli.main(["sinks", "--checkpoint", ckpt, "--out", out, "--batch", "2",
                   "--seq-len", "13"]) == 0
  rec = read(out, "sinks")
  first = np.asarray(rec["result"]["first_token"])
  assert first.shape == (2, 4) and ((first > 0) & (first <= 1)).all()
  assert rec["shape"] == [2, 13]
  assert cli.main(["pattern", "--checkpoint", ckpt, "--out", out, "--batch", "2",
                   "--seq-len", "9", "--layer", "1", "--implementation", "chunked"]) == 0
  rec = read(out, "pattern")
  w = np.asarray(rec["result"]["pattern"])  # [H, T, T], causal rows summing to 1
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
  assert np.allclose(np.triu(w, 1), 0.0) and rec["implementation"] == "chunked"
  with pytest.raises(SystemExit):
    cli.main(["nonsense", "--checkpoint", ckpt])
  stub = types.SimpleNamespace(embedder=types.SimpleNamespace(position="rope"), vocab_size=96)
  tokens, _, _, what = cli._inputs(stub, {}, cli._parser().parse_args(
      ["induction", "--checkpoint", ckpt, "--token-range", "10,20", "--seq-len", "21"]))
  assert tokens.shape == (16, 21) and "[10, 20)" in what
  assert tokens[:, 1:].min() >= 10 and tokens[:, 1:].max() < 20
  with pytest.raises(ValueError, match="token-range"):
    cli._token_range("5", 96)


def test_load_workdir_layout(tmp_path):
  """A workdir written with the trainer's own Checkpointer (params of a known model) loads
  back to the same function, and the CLI runs on it with the run's MQAR validation data."""
  import grain
  import ml_collections
  from flax import nnx
  from attnlab import data as data_lib
  from attnlab import models
  from attnlab.analysis import loading
  from attnlab.train import checkpointing
  cfg = models.default_model_config()
  cfg.update(dict(num_layers=2, d_model=16, num_heads=2, mlp_dim=32, max_len=32))
  data = data_lib.default_data_config("mqar")
  data.update(dict(seq_len=32, vocab_size=32, num_kv_pairs=4, num_validation_examples=8))
  model = models.build_model(cfg, vocab_size=32, rngs=nnx.Rngs(5))
  workdir = tmp_path / "run"
  ckpt = checkpointing.Checkpointer(workdir, async_save=False)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  it = iter(grain.MapDataset.range(4).to_iter_dataset())
  ckpt.save(7, {"step": np.int32(7), "params": params}, it)
  ckpt.wait()
  config = ml_collections.ConfigDict({"model": cfg.to_dict(), "data": data.to_dict()})
  checkpointing.write_run_config(workdir, config.to_json())
  loaded, info = loading.load_workdir(str(workdir))
  tokens = np.arange(24).reshape(2, 12) % 32
  np.testing.assert_allclose(nnx.jit(lambda m, t: m(t))(loaded, tokens),
                             nnx.jit(lambda m, t: m(t))(model, tokens), atol=1e-6)
  assert info["step"] == 7
  out = str(tmp_path / "out")
  assert cli.main(["retrieval", "--workdir", str(workdir), "--out", out, "--batch", "4",
                   "--random-draws", "2"]) == 0
  rec = read(out, "retrieval")
  assert "mqar" in rec["inputs"] and rec["shape"] == [4, 32]
  res = rec["result"]
  assert np.asarray(res["retrieval_scores"]).shape == (2, 2)
  # The ablation baselines, recomputed through the model's own head_masks (not the analysis
  # edits): recall accuracy over the answer positions with head (l, h) zeroed.
  ds = data_lib.source_dataset(data, "validation")
  rows = [ds[i] for i in range(4)]
  toks = np.stack([r["inputs"] for r in rows])
  tgt = np.stack([r["targets"] for r in rows])
  counted = np.stack([r["weights"] for r in rows]) > 0
  fwd = nnx.jit(lambda m, t, hm: m(t, head_masks=hm))
  for layer in range(2):
    for head in range(2):
      hm = np.ones((2, 2), np.float32)
      hm[layer, head] = 0.0
      pred = np.asarray(fwd(model, toks, hm)).argmax(-1)
      want = ((pred == tgt) & counted).sum() / counted.sum()
      assert abs(res["accuracy_without_each_head"][layer][head] - want) < 1e-6
  assert len(res["accuracy_without_random_k_heads"]) == 4 and res["random_draws"] == 2
  assert res["accuracy_without_random_k_heads"][-1] == res["accuracy_without_top_k_heads"][-1]
  assert [w["layer"] for w in res["within_layer"]] == [0, 1]


@pytest.mark.slow
def test_cli_on_trained_workdir(tmp_path):
  """A real (2-step) training run of configs/mqar.py:local, then the retrieval method."""
  from attnlab.train import config_lib, trainer
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "mqar_cfg", os.path.join(os.path.dirname(__file__), "..", "..", "configs", "mqar.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config("local")
  cfg.total_steps = 2
  cfg.checkpoint_every = 2
  cfg.eval_every = 100
  cfg.model.num_layers = 2
  workdir = str(tmp_path / "run")
  config_lib.validate_config(cfg)
  trainer.train_and_evaluate(cfg, workdir)
  out = str(tmp_path / "out")
  assert cli.main(["retrieval", "--workdir", workdir, "--out", out, "--batch", "4"]) == 0
  rec = read(out, "retrieval")
  assert rec["step"] == 2 and "mqar" in rec["inputs"]
  assert np.asarray(rec["result"]["retrieval_scores"]).shape == (2, cfg.model.num_heads)
  assert cli.main(["induction", "--workdir", workdir, "--out", out, "--batch", "3",
                   "--seq-len", "11", "--inputs", "repeated-data"]) == 0
  rec = read(out, "induction")
  assert rec["shape"] == [3, 11] and "validation windows" in rec["inputs"]
