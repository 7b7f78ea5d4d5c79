"""Hugging Face checkpoints in and out: ``from_pretrained``, ``save_pretrained``,
``load_tokenizer``.

A folder holds ``config.json`` and ``model.safetensors`` (or shards listed by
``model.safetensors.index.json``). ``from_pretrained`` maps the config to an attnlab model
config (``hf_config``), builds the model abstractly (``nnx.eval_shape``: no parameter is
allocated), then reads one HF tensor at a time with ``safetensors.safe_open(...,
framework="numpy")``, applies its key rule (``rules``) and places the result on the device, or
on its mesh sharding (logical axis rules) when a mesh is given. No torch at run time and never a
second full copy of the weights in host memory. The idea follows bonsai's Flax NNX loaders
(``safe_open`` + key-mapping rules).

Supported ``model_type``: gpt2, llama, mistral, qwen2; RoPE scaling (``rope_scaling`` /
``rope_parameters``) "linear", "llama3" and "yarn" (``attnlab.nn.positions.RopeScaling``).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attnlab.models.decoder import DecoderLM
from attnlab.models.pretrained import hf_config
from attnlab.models.pretrained.layers import GeluBiasMLP  # registers the "gelu_bias" MLP
from attnlab.models.pretrained import io as io_lib
from attnlab.models.pretrained import rules as rules_lib
from attnlab.nn import partitioning
from attnlab.nn.common import resolve_dtype

DEFAULT_AXIS_RULES = (("vocab", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"),
                      ("heads", "tensor"), ("kv_heads", "tensor"))
# HF buffers that are not parameters (causal-mask buffers, cached RoPE frequencies).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")
CONFIG_ATTR = "pretrained_config"


def read_config(path: str) -> dict[str, Any]:
  file = os.path.join(path, "config.json")
  if not os.path.exists(file):
    raise FileNotFoundError(f"no config.json in {path!r} (expected a Hugging Face model folder)")
  with open(file) as f:
    return json.load(f)


def _gpt2_prefix(source: io_lib.TensorSource) -> str:
  return "" if "wte.weight" in source and "transformer.wte.weight" not in source \
      else "transformer."


def _fresh(abstract: Any) -> Any:
  """A concrete value for a non-parameter variable (dropout RNG keys and counters)."""
  if jax.dtypes.issubdtype(abstract.dtype, jax.dtypes.prng_key):
    key = jax.random.key(0)
    return jax.random.split(key, abstract.shape) if abstract.shape else key
  return jnp.zeros(abstract.shape, abstract.dtype)


def _placement(mesh: Any, axis_rules: Any, abstract_state: Any) -> dict[Any, Any]:
  flat = dict(nnx.to_flat_state(abstract_state))
  if mesh is None:
    return {}
  shardings = partitioning.logical_to_mesh_sharding(abstract_state, mesh, axis_rules)
  return {p: v.get_value() for p, v in nnx.to_flat_state(shardings) if p in flat}


def from_pretrained(path: str, *, dtype: Any = "float32", param_dtype: Any = "float32",
                    mesh: jax.sharding.Mesh | None = None,
                    axis_rules: Sequence[tuple[str, Any]] | None = None,
                    implementation: str = "auto") -> DecoderLM:
  """Load an HF folder as an attnlab ``DecoderLM`` with the same function.

  Args:
    path: folder with ``config.json`` and ``*.safetensors`` (sharded index included).
    dtype: compute dtype ("float32" | "bfloat16" | "float16").
    param_dtype: dtype the parameters are stored in on device.
    mesh: place every parameter on its ``NamedSharding`` (logical axes -> ``axis_rules``,
      default ``DEFAULT_AXIS_RULES``; axes the mesh lacks are replicated).
    axis_rules: logical axis rules ``[(logical_name, mesh_axis | None), ...]``.
    implementation: the model's attention implementation ("auto", "xla", "chunked",
      "pallas").

  Raises:
    ValueError: an unsupported ``model_type`` or config value, a missing tensor, a shape that
      does not fit.
  """
  hf = read_config(path)
  dtype_name = jnp.dtype(resolve_dtype(dtype)).name
  cfg, vocab = hf_config.to_model_config(hf, dtype=dtype_name, implementation=implementation)
  pdtype = resolve_dtype(param_dtype, "param_dtype")
  if mesh is not None and axis_rules is None:
    axis_rules = [r for r in DEFAULT_AXIS_RULES if r[1] in mesh.axis_names]

  def init() -> DecoderLM:
    return DecoderLM(cfg, vocab_size=vocab, rngs=nnx.Rngs(0))

  abstract = nnx.eval_shape(init)
  graphdef, abstract_state = nnx.split(abstract)
  flat = dict(nnx.to_flat_state(abstract_state))
  shardings = _placement(mesh, axis_rules or (), abstract_state)
  values: dict[Any, Any] = {p: _fresh(v.get_value()) for p, v in flat.items()
                            if not isinstance(v, nnx.Param)}
  with io_lib.TensorSource(path) as source:
    rules = rules_lib.rules_for(hf, cfg, gpt2_prefix=_gpt2_prefix(source))
    used = set()
    for rule in rules:
      try:
        arrays = [source.get(name) for name in rule.hf]
      except KeyError as e:
        raise ValueError(f"{e.args[0]} (needed by model_type {hf['model_type']!r})") from None
      used.update(rule.hf)
      outs = rule.load(arrays)
      del arrays
      for param, out in zip(rule.params, outs):
        if param not in flat:
          raise ValueError(f"internal: no parameter {param} for tensor(s) {rule.hf}")
        want = flat[param].get_value().shape
        if tuple(out.shape) != tuple(want):
          raise ValueError(f"tensor(s) {list(rule.hf)} give shape {tuple(out.shape)} for "
                           f"{'.'.join(map(str, param))}, expected {tuple(want)} from "
                           "config.json")
        out = np.asarray(out).astype(pdtype, copy=False)
        values[param] = (jax.device_put(out, shardings[param]) if param in shardings
                         else jnp.asarray(out))
        del out
    missing = [p for p, v in flat.items() if p not in values]
    if missing:
      names = ['.'.join(map(str, p)) for p in missing]
      raise ValueError(f"no tensor of the checkpoint fills {names}")
    unused = [k for k in source.keys() if k not in used and not k.endswith(_IGNORED_SUFFIXES)]
    if unused:
      logging.warning("from_pretrained(%s): %d checkpoint tensors unused: %s", path,
                      len(unused), unused[:8])
  state = abstract_state
  for p, v in nnx.to_flat_state(state):
    v.set_value(values[p])
  model = nnx.merge(graphdef, state)
  setattr(model, CONFIG_ATTR, json.dumps(hf, sort_keys=True))
  return model


def save_pretrained(model: DecoderLM, path: str, *, model_type: str | None = None,
                    max_shard_size: int = 2 << 30, dtype: Any = None) -> list[str]:
  """Write ``model`` as an HF folder (``config.json`` + safetensors, sharded above
  ``max_shard_size`` bytes). A model from ``from_pretrained`` keeps its config.json; another
  ``DecoderLM`` needs ``model_type`` and the architecture of that type. ``dtype``: the stored
  dtype (default: the parameters'). Returns the written safetensors file names."""
  stored = getattr(model, CONFIG_ATTR, None)
  if stored is not None and model_type in (None, json.loads(stored)["model_type"]):
    hf = json.loads(stored)
  elif model_type is None:
    raise ValueError("save_pretrained: this model was not loaded by from_pretrained; pass "
                     f"model_type= (one of {list(hf_config.SUPPORTED_MODEL_TYPES)})")
  else:
    hf = hf_config.from_model(model, model_type)
  cfg, _ = hf_config.to_model_config(hf)
  params = {p: v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  rules = rules_lib.rules_for(hf, cfg)
  missing = [p for r in rules for p in r.params if p not in params]
  if missing:
    raise ValueError(f"model_type {hf['model_type']!r} needs parameters the model lacks: "
                     f"{['.'.join(map(str, p)) for p in missing[:6]]}")
  out_dtype = None if dtype is None else resolve_dtype(dtype)

  def tensors():
    for rule in rules:
      arrays = [np.asarray(jax.device_get(params[p].get_value())) for p in rule.params]
      if rule.synthesized:
        for p, a in zip(rule.params, arrays):
          if np.any(a != 0):
            raise ValueError(f"{'.'.join(map(str, p))} is not zero but model_type "
                             f"{hf['model_type']!r} has no such tensor")
        continue
      for name, arr in zip(rule.hf, rule.save(arrays)):
        yield name, arr if out_dtype is None else arr.astype(out_dtype)

  os.makedirs(path, exist_ok=True)
  files = io_lib.write_tensors(path, tensors(), max_shard_size=max_shard_size)
  key = "dtype" if "dtype" in hf else "torch_dtype"  # transformers 5 / 4 spelling
  hf = dict(hf, **{key: jnp.dtype(out_dtype or jnp.float32).name})
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf, f, indent=2, sort_keys=True)
  return files


def load_tokenizer(path: str) -> Any:
  """``tokenizers.Tokenizer`` from ``path/tokenizer.json`` (FileNotFoundError if absent)."""
  file = path if path.endswith(".json") else os.path.join(path, "tokenizer.json")
  if not os.path.exists(file):
    raise FileNotFoundError(f"no tokenizer.json at {file!r}: load_tokenizer needs a fast "
                            "(tokenizers) tokenizer file")
  import tokenizers  # pylint: disable=g-import-not-at-top
  return tokenizers.Tokenizer.from_file(file)


__all__ = ["from_pretrained", "save_pretrained", "load_tokenizer", "read_config",
           "DEFAULT_AXIS_RULES", "GeluBiasMLP"]
