"""``python -m attnlab.bench mechanisms``: every catalogue entry under one budget, on CPU.

For each registered mechanism (``configs/mechanisms.py:<name>`` with a small model: 2 layers,
d_model 64, 4 heads, batch 1) and each sequence length (default 1k and 8k): parameter count,
forward+backward FLOPs from XLA's ``cost_analysis`` (loops counted once by XLA, so the
chunked path's figure is a lower bound), compiled temporary memory (``memory_analysis``) and
the median time of a loss+gradient step. One table, one JSON file.

Needs a source checkout (it reads ``configs/mechanisms.py`` beside the package), as after
the README's ``pip install -e .``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import attnlab
from attnlab.bench import harness

_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "mechanisms.py")


def _config(name: str, seq: int):
  spec = importlib.util.spec_from_file_location("attnlab_configs_mechanisms", _CONFIGS)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(f"{name},local")
  with c.unlocked():
    c.model.num_layers = max(2, c.model.num_layers)
    c.model.d_model, c.model.num_heads, c.model.mlp_dim = 64, 4, 128
    c.model.num_kv_heads = None
    c.model.max_len = seq
    c.data.seq_len = seq
  return c


def _step(name: str, seq: int):
  from attnlab import data, models
  from attnlab.train import steps
  c = _config(name, seq)
  model = models.build_model(c.model, vocab_size=data.vocab_size(c.data), rngs=nnx.Rngs(0))
  task = steps.task_of(c.model)
  vocab = data.vocab_size(c.data)
  rng = np.random.RandomState(0)
  batch = {"inputs": jnp.asarray(rng.randint(0, vocab, (1, seq)), jnp.int32),
           "targets": jnp.asarray(rng.randint(0, vocab, (1, seq)), jnp.int32),
           "weights": jnp.ones((1, seq), jnp.float32)}
  if task == steps.TASK_CLASSIFICATION:
    batch = {"inputs": batch["inputs"], "weights": batch["weights"],
             "label": jnp.zeros((1,), jnp.int32)}
  graphdef, params, state = nnx.split(model, nnx.Param, ...)

  def loss(params, state, batch):
    m = nnx.merge(graphdef, params, state)
    out = steps._model_call(m, batch, task, deterministic=True)
    logits = out[0] if isinstance(out, tuple) else out
    s = steps.loss_stats(logits, batch, task)
    return s["loss_sum"] / jnp.maximum(s["weight_sum"], 1.0)

  fn = jax.jit(jax.value_and_grad(loss))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  return fn, (params, state, batch), n_params


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(prog="python -m attnlab.bench mechanisms", description=__doc__)
  p.add_argument("--seq", type=int, nargs="+", default=[1024, 8192])
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--only", nargs="*", default=None, help="mechanism names (default: all)")
  p.add_argument("--out", default="results")
  a = p.parse_args(argv)
  import attnlab.nn  # noqa: F401  (registers module-level mechanisms)
  names = a.only or attnlab.list_mechanisms()
  unknown = sorted(set(names) - set(attnlab.list_mechanisms()))
  if unknown:
    raise ValueError(f"--only: unknown mechanisms {unknown}; known: {attnlab.list_mechanisms()}")
  rows, path = [], None
  for seq in a.seq:
    for i, name in enumerate(names):
      print(f"[{i + 1}/{len(names)}] seq {seq} {name}", flush=True)
      row = {"mechanism": name, "kind": attnlab.get_mechanism(name).kind, "seq": seq}
      try:
        fn, args, row["params"] = _step(name, seq)
        row.update(harness.compiled_stats(fn, *args))
        row.update(harness.time_fn(fn, *args, warmup=1, runs=a.runs))
        row["temp_mib"] = row.get("temp_bytes", 0) / harness.MIB
        row["gflops"] = row.get("xla_flops", float("nan")) / 1e9
      except Exception as e:  # report and go on: one failure must not hide the rest
        row["error"] = f"{type(e).__name__}: {e}"[:300]
        traceback.print_exc()
      rows.append(row)
      # Rewrite the JSON after every row so a stopped run keeps what it measured.
      path = harness.write_json("mechanisms", {"rows": rows, "complete": False}, a.out,
                                path=path)
  path = harness.write_json("mechanisms", {"rows": rows, "complete": True}, a.out, path=path)
  harness.print_table(rows, ["mechanism", "kind", "seq", "params", "gflops", "temp_mib",
                             "median_s", "error"])
  print(f"wrote {path}")
