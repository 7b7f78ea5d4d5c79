"""Key rules: Hugging Face tensor names <-> attnlab parameter paths, with their transforms.

A ``Rule`` maps a group of HF tensors to a group of attnlab parameters (usually one to one; GPT-2
splits its fused ``c_attn`` into q, k and v). ``load`` turns the HF numpy arrays into the
attnlab arrays, ``save`` the reverse. attnlab layouts: q ``[E, H, D]``, k/v ``[E, K, D]``,
o ``[H, D, E]``, dense kernels ``[in, out]``; HF ``nn.Linear`` weights are ``[out, in]`` and
GPT-2's ``Conv1D`` weights ``[in, out]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

Path = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
  """``hf``: HF tensor names; ``params``: attnlab state paths; ``load(hf arrays) -> params``,
  ``save(param arrays) -> hf arrays``. ``synthesized``: parameters absent from the HF format
  (filled with zeros on load, dropped on save after checking they are zero)."""
  hf: tuple[str, ...]
  params: tuple[Path, ...]
  load: Callable[[Sequence[np.ndarray]], list[np.ndarray]]
  save: Callable[[Sequence[np.ndarray]], list[np.ndarray]]
  synthesized: bool = False


def _same(xs):
  return list(xs)


def _t(xs):
  return [np.ascontiguousarray(x.T) for x in xs]


def one(hf: str, param: Path, load=_same, save=_same) -> Rule:
  return Rule((hf,), (param,), load, save)


def linear_in(hf: str, param: Path, heads: int, dim: int) -> Rule:
  """``nn.Linear [heads*dim, E]`` <-> ``[E, heads, dim]`` (q/k/v projections)."""
  return one(hf, param,
             lambda xs: [np.ascontiguousarray(xs[0].T).reshape(-1, heads, dim)],
             lambda xs: [np.ascontiguousarray(xs[0].reshape(xs[0].shape[0], -1).T)])


def bias_in(hf: str, param: Path, heads: int, dim: int) -> Rule:
  return one(hf, param, lambda xs: [xs[0].reshape(heads, dim)], lambda xs: [xs[0].reshape(-1)])


def linear_out(hf: str, param: Path, heads: int, dim: int) -> Rule:
  """``nn.Linear [E, heads*dim]`` <-> o ``[heads, dim, E]``."""
  return one(hf, param,
             lambda xs: [np.ascontiguousarray(xs[0].T).reshape(heads, dim, -1)],
             lambda xs: [np.ascontiguousarray(xs[0].reshape(heads * dim, -1).T)])


def zeros(param: Path, shape: tuple[int, ...]) -> Rule:
  return Rule((), (param,), lambda xs: [np.zeros(shape, np.float32)], lambda xs: [],
              synthesized=True)


def llama_rules(n_layers: int, *, heads: int, kv_heads: int, head_dim: int, tied: bool,
                qkv_bias: bool, o_bias: bool, d_model: int, o_bias_absent: bool) -> list[Rule]:
  """LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM tensor names."""
  rules = [one("model.embed_tokens.weight", ("embedder", "tokens", "embedding")),
           one("model.norm.weight", ("final_norm", "scale"))]
  if not tied:
    rules.append(one("lm_head.weight", ("head", "kernel"), _t, _t))
  for i in range(n_layers):
    p, a = f"model.layers.{i}.", ("stack", "blocks", i)
    att, mlp = a + ("attention",), a + ("mlp",)
    for name, n in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
      rules.append(linear_in(f"{p}self_attn.{name}_proj.weight", att + (name, "kernel"), n,
                             head_dim))
      if qkv_bias:
        rules.append(bias_in(f"{p}self_attn.{name}_proj.bias", att + (name, "bias"), n,
                             head_dim))
    rules.append(linear_out(f"{p}self_attn.o_proj.weight", att + ("o", "kernel"), heads,
                            head_dim))
    if o_bias:
      rules.append(zeros(att + ("o", "bias"), (d_model,)) if o_bias_absent
                   else one(f"{p}self_attn.o_proj.bias", att + ("o", "bias")))
    rules += [one(f"{p}mlp.gate_proj.weight", mlp + ("gate", "kernel"), _t, _t),
              one(f"{p}mlp.up_proj.weight", mlp + ("up", "kernel"), _t, _t),
              one(f"{p}mlp.down_proj.weight", mlp + ("wo", "kernel"), _t, _t),
              one(f"{p}input_layernorm.weight", a + ("norm1", "scale")),
              one(f"{p}post_attention_layernorm.weight", a + ("norm2", "scale"))]
  return rules


def gpt2_rules(n_layers: int, *, heads: int, head_dim: int, tied: bool,
               prefix: str = "transformer.") -> list[Rule]:
  """GPT2LMHeadModel tensor names (``prefix`` "" for a bare GPT2Model checkpoint)."""
  e = heads * head_dim

  def qkv_load(xs):
    w = xs[0]  # Conv1D [E, 3E] or bias [3E]
    parts = np.split(w, 3, axis=-1)
    if w.ndim == 1:
      return [x.reshape(heads, head_dim) for x in parts]
    return [np.ascontiguousarray(x).reshape(-1, heads, head_dim) for x in parts]

  def qkv_save(xs):
    if xs[0].ndim == 2:  # biases [H, D]
      return [np.concatenate([x.reshape(-1) for x in xs])]
    return [np.concatenate([x.reshape(x.shape[0], -1) for x in xs], axis=-1)]

  rules = [one(f"{prefix}wte.weight", ("embedder", "tokens", "embedding")),
           one(f"{prefix}wpe.weight", ("embedder", "learned", "embed", "embedding")),
           one(f"{prefix}ln_f.weight", ("final_norm", "scale")),
           one(f"{prefix}ln_f.bias", ("final_norm", "bias"))]
  if not tied:
    rules.append(one("lm_head.weight", ("head", "kernel"), _t, _t))
  for i in range(n_layers):
    p, a = f"{prefix}h.{i}.", ("stack", "blocks", i)
    att, mlp = a + ("attention",), a + ("mlp",)
    for kind in ("kernel", "bias"):
      hf = f"{p}attn.c_attn.{'weight' if kind == 'kernel' else 'bias'}"
      rules.append(Rule((hf,), tuple(att + (n, kind) for n in "qkv"), qkv_load, qkv_save))
    rules += [one(f"{p}attn.c_proj.weight", att + ("o", "kernel"),
                  lambda xs: [xs[0].reshape(heads, head_dim, e)],
                  lambda xs: [xs[0].reshape(e, e)]),
              one(f"{p}attn.c_proj.bias", att + ("o", "bias")),
              one(f"{p}mlp.c_fc.weight", mlp + ("wi", "kernel")),
              one(f"{p}mlp.c_fc.bias", mlp + ("wi", "bias")),
              one(f"{p}mlp.c_proj.weight", mlp + ("wo", "kernel")),
              one(f"{p}mlp.c_proj.bias", mlp + ("wo", "bias"))]
    for n, ln in (("norm1", "ln_1"), ("norm2", "ln_2")):
      rules += [one(f"{p}{ln}.weight", a + (n, "scale")), one(f"{p}{ln}.bias", a + (n, "bias"))]
  return rules


def rules_for(hf: dict[str, Any], cfg: Any, *, gpt2_prefix: str = "transformer.") -> list[Rule]:
  """The rules of an HF config (``hf_config.to_model_config`` gave ``cfg``)."""
  head_dim = cfg.head_dim or cfg.d_model // cfg.num_heads
  if hf["model_type"] == "gpt2":
    return gpt2_rules(cfg.num_layers, heads=cfg.num_heads, head_dim=head_dim,
                      tied=cfg.tie_embeddings, prefix=gpt2_prefix)
  qwen2 = hf["model_type"] == "qwen2"
  return llama_rules(cfg.num_layers, heads=cfg.num_heads,
                     kv_heads=cfg.num_kv_heads or cfg.num_heads, head_dim=head_dim,
                     tied=cfg.tie_embeddings, qkv_bias=bool(cfg.attention_bias),
                     o_bias=bool(cfg.attention_bias), d_model=cfg.d_model,
                     o_bias_absent=qwen2)
