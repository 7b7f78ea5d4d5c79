"""from_pretrained / save_pretrained / load_tokenizer against Hugging Face transformers.

The fixtures in tests/fixtures/hf/<name>/ were written by transformers' save_pretrained
(scripts/make_hf_fixtures.py, transformers 5.24 + torch 2.13 CPU, eager attention, float32):
tiny random models with their logits and 20-token greedy generations. The expected values come
from transformers, not from attnlab.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from attnlab import models
from attnlab.models.pretrained import hf_config
from attnlab.models.pretrained import io as io_lib

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf")
TYPES = ("gpt2", "llama", "mistral", "qwen2")
# The same, with scaled RoPE (config.json rope_parameters: llama3 / yarn).
ROPE_SCALED = ("llama_rope_llama3", "qwen2_rope_yarn")


def expected(model_type):
  return dict(np.load(os.path.join(FIXTURES, model_type, "expected.npz")))


_CACHE = {}


@nnx.jit
def fwd(model, tokens):
  """The model's forward, compiled (eager NNX calls compile op by op: much slower)."""
  return model(tokens)


def load(model_type, **kw):
  key = (model_type, tuple(sorted(kw.items())))
  if key not in _CACHE:
    _CACHE[key] = models.from_pretrained(os.path.join(FIXTURES, model_type), **kw)
  return _CACHE[key]


@pytest.mark.parametrize("model_type", TYPES + ROPE_SCALED)
def test_logits_and_greedy_match_transformers(model_type):
  exp = expected(model_type)
  model = load(model_type)
  logits = np.asarray(fwd(model, exp["input_ids"]))
  # f32 on both sides; differences are float rounding of different op orders.
  np.testing.assert_allclose(logits, exp["logits"], atol=1e-4, rtol=1e-4)
  out = np.asarray(models.generate(model, exp["prompt"], 20))
  np.testing.assert_array_equal(out, exp["greedy"])


@pytest.mark.parametrize("name", ROPE_SCALED)
def test_rope_scaling_is_exercised(name):
  """The scaled fixtures' logits differ from the same weights with unscaled RoPE (so the
  parity above checks the scaling), and save_pretrained keeps the scaling."""
  exp = expected(name)
  model = load(name)
  scaling = [b.attention.rope_scaling for b in model.stack.blocks]
  assert scaling[0] is not None and scaling[0].rope_type in name
  for block in model.stack.blocks:
    block.attention.rope_scaling = None
  try:
    logits = np.asarray(fwd(model, exp["input_ids"]))
  finally:
    for block, s in zip(model.stack.blocks, scaling):
      block.attention.rope_scaling = s
  assert np.abs(logits - exp["logits"]).max() > 1e-2
  hf = hf_config.from_model(model, name.split("_")[0])
  assert hf["rope_scaling"] == scaling[0].as_dict()
  cfg, _ = hf_config.to_model_config(hf)
  assert dict(cfg.rope_scaling) == scaling[0].as_dict()


def test_mistral_window_is_exercised():
  """The mistral fixture's window (8) is shorter than its sequences: without the window the
  logits differ from transformers' (so the parity above checks the window)."""
  exp = expected("mistral")
  cfg = json.load(open(os.path.join(FIXTURES, "mistral", "config.json")))
  assert cfg["sliding_window"] < exp["input_ids"].shape[1]
  model = load("mistral")
  for block in model.stack.blocks:
    block.attention.sliding_window = None
  try:
    logits = np.asarray(fwd(model, exp["input_ids"]))
  finally:
    for block in model.stack.blocks:
      block.attention.sliding_window = cfg["sliding_window"]
  assert np.abs(logits - exp["logits"]).max() > 1e-2


@pytest.mark.parametrize("implementation", ["chunked",
                                            pytest.param("pallas", marks=pytest.mark.slow)])
def test_fused_implementations_match(implementation):
  exp = expected("llama")
  model = load("llama", implementation=implementation)
  np.testing.assert_allclose(np.asarray(fwd(model, exp["input_ids"])), exp["logits"],
                             atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model_type", ["gpt2", "qwen2"])
def test_save_pretrained_round_trip_sharded(model_type, tmp_path):
  """save_pretrained writes the HF names/layout back: the tensors equal the original file's,
  a sharded save has an index, and reloading gives the same logits."""
  src = os.path.join(FIXTURES, model_type)
  model = load(model_type)
  files = models.save_pretrained(model, str(tmp_path), max_shard_size=20_000)
  assert len(files) > 1 and os.path.exists(tmp_path / io_lib.INDEX)
  with io_lib.TensorSource(src) as a, io_lib.TensorSource(str(tmp_path)) as b:
    assert set(b.keys()) <= set(a.keys())
    for k in a.keys():
      if k in b:
        np.testing.assert_array_equal(a.get(k), b.get(k), err_msg=k)
      else:  # only the tied lm_head (transformers also stores it) may be left out
        assert k == "lm_head.weight"
  exp = expected(model_type)
  again = models.from_pretrained(str(tmp_path))
  np.testing.assert_array_equal(np.asarray(fwd(again, exp["input_ids"])),
                                np.asarray(fwd(model, exp["input_ids"])))


def test_save_pretrained_from_attnlab_model(tmp_path):
  """A DecoderLM built by attnlab saves as llama and reloads to the same function."""
  cfg = models.default_model_config()
  cfg.update(dict(num_layers=1, d_model=16, num_heads=2, num_kv_heads=1, mlp_dim=32,
                  mlp="swiglu", norm="rmsnorm", norm_eps=1e-5, position="rope", max_len=32))
  model = models.build_model(cfg, vocab_size=20, rngs=nnx.Rngs(3))
  models.save_pretrained(model, str(tmp_path), model_type="llama")
  tokens = np.arange(10)[None] % 20
  again = models.from_pretrained(str(tmp_path))
  np.testing.assert_allclose(np.asarray(fwd(again, tokens)), np.asarray(fwd(model, tokens)),
                             atol=1e-6)
  with pytest.raises(ValueError, match="model_type"):
    models.save_pretrained(model, str(tmp_path / "x"))


def test_mesh_placement():
  mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  exp = expected("llama")
  model = models.from_pretrained(os.path.join(FIXTURES, "llama"), mesh=mesh)
  q = model.stack.blocks[0].attention.q.kernel.get_value()  # [embed, heads, head_dim]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  assert q.addressable_shards[0].data.shape == (16, 1, 8)
  np.testing.assert_allclose(np.asarray(fwd(model, exp["input_ids"])), exp["logits"],
                             atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_bfloat16_compute():
  exp = expected("llama")
  model = load("llama", dtype="bfloat16")
  logits = np.asarray(fwd(model, exp["input_ids"]))
  # bf16 activations: ~3 significant digits; logits here are O(10).
  np.testing.assert_allclose(logits, exp["logits"], atol=0.5, rtol=0.05)


def test_errors(tmp_path):
  bad = tmp_path / "bad"
  shutil.copytree(os.path.join(FIXTURES, "llama"), bad)
  cfg = json.load(open(bad / "config.json"))
  json.dump(dict(cfg, model_type="bert"), open(bad / "config.json", "w"))
  with pytest.raises(ValueError, match="unsupported model_type 'bert'"):
    models.from_pretrained(str(bad))
  json.dump(dict(cfg, rope_scaling={"rope_type": "dynamic", "factor": 4.0}),
            open(bad / "config.json", "w"))
  with pytest.raises(ValueError, match="dynamic"):
    models.from_pretrained(str(bad))
  json.dump(dict(cfg, rope_scaling={"rope_type": "llama3", "factor": 4.0}),
            open(bad / "config.json", "w"))
  with pytest.raises(ValueError, match="low_freq_factor"):
    models.from_pretrained(str(bad))
  # a missing tensor is named
  json.dump(cfg, open(bad / "config.json", "w"))
  from safetensors.numpy import save_file
  with io_lib.TensorSource(str(bad)) as src:
    tensors = {k: src.get(k) for k in src.keys() if "layers.1.mlp.up_proj" not in k}
  save_file(tensors, str(bad / "model.safetensors"))
  with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
    models.from_pretrained(str(bad))
  with pytest.raises(FileNotFoundError, match="config.json"):
    models.from_pretrained(str(tmp_path))


def test_load_tokenizer(tmp_path):
  tok = models.load_tokenizer(os.path.join(FIXTURES, "gpt2"))
  assert tok.encode("w0 w5 zzz").ids == [4, 9, 3]
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    models.load_tokenizer(str(tmp_path))
