"""Make the tiny Hugging Face parity fixtures in tests/fixtures/hf/<model_type>/.

Needs transformers + torch, which attnlab does not depend on; use a separate venv:

    python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch transformers safetensors
    /tmp/hfvenv/bin/python scripts/make_hf_fixtures.py

For each model_type a randomly initialised tiny model (2 layers, hidden 32, vocab 96) is built
with transformers, every parameter is redrawn (matrices N(0, 0.3^2) so logits are far from
ties, norm weights 1 + N(0, 0.1^2), biases N(0, 0.1^2)), and saved with ``save_pretrained``
(config.json + model.safetensors, float32). ``expected.npz`` holds:

* ``input_ids [2, 12]`` and transformers' ``logits [2, 12, 96]`` (eager attention, float32);
* ``prompt [2, 8]`` and ``greedy [2, 28]``: ``generate(max_new_tokens=20, do_sample=False)``;
* ``min_gap``: the smallest top-1 minus top-2 logit over the greedy steps (the draw is redone
  with another seed until it is above 1e-3, so float rounding cannot flip a greedy choice).

gpt2/ also gets a small word-level ``tokenizer.json`` (made with ``tokenizers``) for the
``load_tokenizer`` test. Total size well under 2 MB.

RoPE scaling: ``llama_rope_llama3/`` and ``qwen2_rope_yarn/`` are two more such models with a
scaled RoPE (``rope_parameters``), and ``rope_scaling.npz`` holds, for several scaling dicts
(``<case>/config`` as JSON), transformers' ``LlamaRotaryEmbedding`` ``inv_freq``,
``attention_scaling`` and ``cos`` / ``sin`` at positions 0..63 (head_dim 16, theta 10000).
``python scripts/make_hf_fixtures.py rope`` remakes only the table.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import transformers

VOCAB, LAYERS, HIDDEN, INNER = 96, 2, 32, 64
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf")


def configs() -> dict[str, transformers.PretrainedConfig]:
  common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
  llama_like = dict(common, hidden_size=HIDDEN, intermediate_size=INNER,
                    num_hidden_layers=LAYERS, num_attention_heads=4,
                    max_position_embeddings=64, rms_norm_eps=1e-5)
  return {
      # learned positions, LayerNorm, GELU-tanh MLP with biases, fused qkv, tied embeddings
      "gpt2": transformers.GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_inner=INNER,
                                      n_positions=64, layer_norm_epsilon=1e-5, **common),
      # GQA (2 kv heads), rope theta 500, untied head, q/k/v/o biases
      "llama": transformers.LlamaConfig(num_key_value_heads=2, rope_theta=500.0,
                                        tie_word_embeddings=False, attention_bias=True,
                                        **llama_like),
      # MQA, sliding window 8 (shorter than the sequences), head_dim 16 != hidden / heads
      "mistral": transformers.MistralConfig(num_key_value_heads=1, sliding_window=8,
                                            head_dim=16, rope_theta=10000.0,
                                            tie_word_embeddings=False, **llama_like),
      # q/k/v biases without an o bias, tied embeddings
      "qwen2": transformers.Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True,
                                        rope_theta=1000.0, use_sliding_window=False,
                                        **llama_like),
      # llama3 RoPE scaling: head_dim 8 and theta 500 put one frequency in each llama3 band
      # (wavelength < 32/4 kept, 32/4..32 blended, > 32 divided by the factor)
      "llama_rope_llama3": transformers.LlamaConfig(
          num_key_value_heads=2, tie_word_embeddings=False,
          rope_parameters=dict(ROPE_CASES["llama3"], rope_theta=500.0), **llama_like),
      # yarn: ramp between the beta rotation counts, cos/sin scaled by 0.1 ln(4) + 1
      "qwen2_rope_yarn": transformers.Qwen2Config(
          num_key_value_heads=2, tie_word_embeddings=True, use_sliding_window=False,
          rope_parameters=dict(ROPE_CASES["yarn"], rope_theta=1000.0), **llama_like),
  }


# RoPE scaling dicts of the rope_scaling.npz table (head_dim 16, theta 10000, 64 positions).
ROPE_CASES = {
    "linear": dict(rope_type="linear", factor=4.0),
    "llama3": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=32),
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16),
    "yarn_mscale": dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=16,
                        mscale=1.0, mscale_all_dim=0.5, beta_fast=16.0, beta_slow=2.0,
                        truncate=False),
    "yarn_attention_factor": dict(rope_type="yarn", factor=2.0, attention_factor=1.3,
                                  original_max_position_embeddings=32),
}


def make_rope_table() -> None:
  import json  # pylint: disable=g-import-not-at-top
  from transformers.models.llama import modeling_llama  # pylint: disable=g-import-not-at-top
  arrays = {}
  pos = torch.arange(64)[None]
  for name, case in ROPE_CASES.items():
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4,
                                   max_position_embeddings=64,
                                   rope_parameters=dict(case, rope_theta=10000.0))
    rope = modeling_llama.LlamaRotaryEmbedding(cfg)
    x = torch.zeros(1, 64, 16)
    cos, sin = rope(x, pos)
    arrays[f"{name}/config"] = np.array(json.dumps(case))
    arrays[f"{name}/inv_freq"] = rope.inv_freq.numpy().astype(np.float32)
    arrays[f"{name}/attention_scaling"] = np.float32(rope.attention_scaling)
    arrays[f"{name}/cos"] = cos[0].numpy().astype(np.float32)
    arrays[f"{name}/sin"] = sin[0].numpy().astype(np.float32)
  np.savez_compressed(os.path.join(OUT, "rope_scaling.npz"), **arrays)
  print(f"rope_scaling.npz: {list(ROPE_CASES)}, transformers {transformers.__version__}")


def redraw(model: torch.nn.Module, gen: torch.Generator) -> None:
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "norm" in name or "ln_" in name:
        p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
      elif p.ndim == 1:
        p.copy_(0.1 * noise)
      else:
        p.copy_(0.3 * noise)


def greedy_gap(model, prompt, n):
  out = model.generate(prompt, max_new_tokens=n, do_sample=False, output_scores=True,
                       return_dict_in_generate=True, pad_token_id=0)
  gaps = [float((s.topk(2).values[:, 0] - s.topk(2).values[:, 1]).min()) for s in out.scores]
  return out.sequences, min(gaps)


def make(model_type: str, cfg: transformers.PretrainedConfig) -> None:
  cfg._attn_implementation = "eager"  # pylint: disable=protected-access
  for seed in range(20):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32,
                                                          attn_implementation="eager")
    redraw(model, torch.Generator().manual_seed(seed))
    model.eval()
    rng = np.random.default_rng(seed)
    ids = torch.tensor(rng.integers(3, VOCAB, (2, 12)), dtype=torch.long)
    prompt = torch.tensor(rng.integers(3, VOCAB, (2, 8)), dtype=torch.long)
    with torch.no_grad():
      logits = model(ids).logits.float().numpy()
      seqs, gap = greedy_gap(model, prompt, 20)
    if gap > 1e-3 and seqs.shape[1] == 28:
      break
  else:
    raise RuntimeError(f"{model_type}: no seed gave greedy margins above 1e-3")
  out = os.path.join(OUT, model_type)
  os.makedirs(out, exist_ok=True)
  model.save_pretrained(out, safe_serialization=True)
  for extra in ("generation_config.json",):
    if os.path.exists(os.path.join(out, extra)):
      os.remove(os.path.join(out, extra))
  np.savez_compressed(os.path.join(out, "expected.npz"), input_ids=ids.numpy(), logits=logits,
                      prompt=prompt.numpy(), greedy=seqs.numpy(), min_gap=np.float32(gap),
                      seed=np.int32(seed))
  print(f"{model_type}: seed {seed}, min greedy gap {gap:.4f}, transformers "
        f"{transformers.__version__}")


def make_tokenizer(out: str) -> None:
  import tokenizers  # pylint: disable=g-import-not-at-top
  words = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 4)]
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.save(os.path.join(out, "tokenizer.json"))


def main(argv: list[str]) -> None:
  wanted = argv[1:] or [*configs(), "rope"]
  for model_type, cfg in configs().items():
    if model_type in wanted:
      make(model_type, cfg)
  if "rope" in wanted:
    make_rope_table()
  if "gpt2" in wanted:
    make_tokenizer(os.path.join(OUT, "gpt2"))


if __name__ == "__main__":
  main(sys.argv)
