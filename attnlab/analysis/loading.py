"""Models to study: a Hugging Face folder (``--checkpoint``) or an attnlab training workdir
(``--workdir``: ``DIR/config.json`` + the newest orbax checkpoint's parameters)."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from flax import nnx


def load_checkpoint(path: str, *, implementation: str = "auto") -> tuple[Any, dict[str, Any]]:
  """``(model, info)`` from an HF folder (``attnlab.models.from_pretrained``)."""
  from attnlab import models  # pylint: disable=g-import-not-at-top
  model = models.from_pretrained(path, implementation=implementation)
  cfg = json.loads(getattr(model, models.pretrained.CONFIG_ATTR))
  return model, {"source": os.path.abspath(path), "model_type": cfg["model_type"]}


def _steps(ckpt_dir: str) -> list[int]:
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


def load_workdir(workdir: str, *, step: int | None = None,
                 implementation: str | None = None) -> tuple[Any, dict[str, Any]]:
  """``(model, info)``: the ``DecoderLM`` of an attnlab training run with the parameters of
  checkpoint ``step`` (the newest when None), placed on the default device. ``info`` holds
  the step, the run config and its data section (for the methods' default inputs)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from attnlab import data as data_lib  # pylint: disable=g-import-not-at-top
  from attnlab import models  # pylint: disable=g-import-not-at-top
  cfg_file = os.path.join(workdir, "config.json")
  if not os.path.exists(cfg_file):
    raise FileNotFoundError(f"no config.json in the workdir {workdir!r} (written by "
                            "python -m attnlab.train when a run starts)")
  with open(cfg_file) as f:
    config = json.load(f)
  model_cfg = dict(config["model"])
  if model_cfg.get("name", "decoder_lm") != "decoder_lm":
    raise ValueError(f"the analysis methods need a decoder_lm, the workdir's model is "
                     f"{model_cfg.get('name')!r}")
  if implementation is not None:
    model_cfg["attention"] = dict(model_cfg.get("attention", {}), implementation=implementation)
  vocab = data_lib.vocab_size(config["data"])
  ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
  steps = _steps(ckpt_dir)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ValueError(f"step {step} is not among the checkpoints {steps} of {ckpt_dir}")
  def make() -> Any:
    return models.build_model(model_cfg, vocab_size=vocab, rngs=nnx.Rngs(0))

  graphdef, params, rngs, rest = nnx.split(nnx.eval_shape(make), nnx.Param, nnx.RngState, ...)
  path = os.path.join(ckpt_dir, str(step), "state")
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(path)
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        dict(tree), is_leaf=lambda x: hasattr(x, "shape"))
  restored = ckptr.restore(path, target)
  nnx.replace_by_pure_dict(params, restored["params"])
  # RNG streams are not checkpointed (the trainer derives them per step): fresh ones.
  rngs = jax.jit(lambda: nnx.state(make(), nnx.RngState))()
  if restored.get("model_state"):  # non-parameter model state (e.g. PRepBN statistics)
    nnx.replace_by_pure_dict(rest, restored["model_state"])
  model = nnx.merge(graphdef, params, rngs, rest)
  return model, {"source": os.path.abspath(workdir), "step": step, "config": config,
                 "data": config["data"]}
