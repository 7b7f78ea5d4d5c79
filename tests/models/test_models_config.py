"""default_model_config / build_model / count_params and early, clear config errors."""

import ml_collections
import pytest
from flax import nnx

import attnlab
import attnlab.nn
from attnlab.models import (DecoderLM, EncoderClassifier, build_model, count_params,
                            default_model_config, validate_model_config)

EXPECTED_KEYS = {"name", "num_layers", "d_model", "num_heads", "num_kv_heads", "head_dim",
                 "mlp_dim", "mlp", "norm", "norm_eps", "dropout", "position", "rope_base",
                 "max_len", "tie_embeddings", "num_classes", "pooling", "dtype",
                 "attention_bias", "attention"}


def tiny_cfg(**kw):
  cfg = default_model_config()
  cfg.update(dict(num_layers=1, d_model=16, num_heads=4, num_kv_heads=2, mlp_dim=32,
                  max_len=16))
  cfg.update(kw)
  return cfg


def test_default_config_keys():
  cfg = default_model_config()
  assert EXPECTED_KEYS <= set(cfg.keys())  # variants may add keys of their own
  assert {"mechanism", "implementation", "kwargs", "softcap", "sliding_window"} <= set(
      cfg.attention.keys())
  assert cfg.head_dim is None and cfg.num_kv_heads is None
  validate_model_config(cfg)
  # Typed placeholders accept overrides of their type (as from the command line).
  cfg.head_dim = 32
  cfg.attention.softcap = 30.0
  cfg.attention.sliding_window = 128
  validate_model_config(cfg)
  with pytest.raises(AttributeError):
    cfg.not_a_key  # noqa: B018  ConfigDict rejects unknown attributes


def test_build_both_models_and_count_params():
  cfg = tiny_cfg(position="learned", tie_embeddings=False)
  lm = build_model(cfg, vocab_size=32, rngs=nnx.Rngs(0))
  assert isinstance(lm, DecoderLM)
  e, m, v, k, d, h = 16, 32, 32, 2, 4, 4
  attn = e * h * d * 2 + e * k * d * 2  # q, o + k, v
  block = attn + 2 * e * m + 2 * 2 * e  # gelu MLP + two layernorms (scale, bias)
  want = v * e + 16 * e + block + 2 * e + e * v  # embed, positions, block, final norm, head
  assert count_params(lm) == want
  cfg.name = "encoder_classifier"
  enc = build_model(cfg, vocab_size=32, rngs=nnx.Rngs(0))
  assert isinstance(enc, EncoderClassifier)
  assert count_params(enc) == want - e * v + e * 2 + 2


@pytest.mark.parametrize("key, value, match", [
    ("name", "gpt", r"model name must be one of \['decoder_lm', 'encoder_classifier'\]"),
    ("norm", "batchnorm", r"norm must be one of \[.*'layernorm'.*'rmsnorm'.*\], got 'batchnorm'"),
    ("mlp", "relu", r"mlp must be one of \[.*'gelu'.*'swiglu'.*\], got 'relu'"),
    ("position", "rotary", "position must be one of"),
    ("pooling", "max", "pooling must be one of"),
    ("dtype", "float64", "dtype must be one of"),
    ("num_kv_heads", 3, r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"),
    ("d_model", 18, r"d_model \(18\) must be divisible by num_heads \(4\)"),
    ("dropout", 1.0, r"dropout must be in \[0, 1\)"),
    ("num_layers", 0, "num_layers must be a positive int"),
])
def test_bad_config_fails_early(key, value, match):
  cfg = tiny_cfg()
  cfg[key] = value
  with pytest.raises(ValueError, match=match):
    build_model(cfg, vocab_size=32, rngs=nnx.Rngs(0))


def test_rope_scaling_needs_rope_positions_and_a_module_that_takes_it():
  cfg = tiny_cfg()
  cfg.position = "learned"
  cfg.rope_scaling = {"rope_type": "linear", "factor": 2.0}
  with pytest.raises(ValueError, match="rope_scaling is set but position is 'learned'"):
    build_model(cfg, vocab_size=32, rngs=nnx.Rngs(0))
  cfg = tiny_cfg()
  cfg.position = "rope"
  cfg.rope_scaling = {"rope_type": "linear", "factor": 2.0}
  cfg.attention.mechanism = "mixer_fixed"
  with pytest.raises(ValueError, match="takes no rope_scaling"):
    build_model(cfg, vocab_size=32, rngs=nnx.Rngs(0))


def test_unknown_mechanism_lists_valid_names():
  cfg = tiny_cfg()
  cfg.attention.mechanism = "linear_typo"
  with pytest.raises(ValueError, match="unknown attention mechanism 'linear_typo'") as err:
    validate_model_config(cfg)
  for name in attnlab.nn.list_attention_mechanisms():
    assert repr(name) in str(err.value)
  assert "'softmax'" in str(err.value) and "'sigmoid'" in str(err.value)


def test_attention_kwargs_checked():
  cfg = tiny_cfg()
  cfg.attention.kwargs = ml_collections.ConfigDict({"sigmoid_bias": -2.0})
  with pytest.raises(ValueError, match=r"unknown attention kwargs \['sigmoid_bias'\] for "
                     r"mechanism 'softmax'"):
    validate_model_config(cfg)
  cfg.attention.mechanism = "sigmoid"
  validate_model_config(cfg)
  model = build_model(cfg, vocab_size=32, rngs=nnx.Rngs(0))
  assert dict(model.stack.blocks[0].attention.core_kwargs) == {"sigmoid_bias": -2.0}
  cfg.attention.kwargs = ml_collections.ConfigDict({"mask": 1})
  with pytest.raises(ValueError, match="may not set 'mask'"):
    validate_model_config(cfg)
  cfg.attention.kwargs = ml_collections.ConfigDict({})
  cfg.attention.implementation = "pallas_typo"
  with pytest.raises(ValueError, match="unknown implementation 'pallas_typo'"):
    validate_model_config(cfg)


def test_vocab_size_checked():
  with pytest.raises(ValueError, match="vocab_size must be a positive int"):
    build_model(tiny_cfg(), vocab_size=0, rngs=nnx.Rngs(0))
