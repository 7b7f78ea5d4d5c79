"""``python -m attnlab.bench mechanisms``: every catalogue entry under one budget, on CPU.

Two levels (``--level``, default both):

* ``op``: the attention call alone, forward+backward (gradients of q, k, v and the
  mechanism's own arrays) at ``B=1, H=8, D=64``, float32, causal, for plain chunked softmax
  (the baseline), ``score_mod=None`` / identity score_mod, ALiBi and soft-capping natively and
  as score_mods, and every mechanism with a memory-efficient score_mod path (``OP_CASES``):
  compiled temporary memory, median / min time, the time relative to the baseline, and the
  issue's targets (``temp <= 256 MiB``, ``time <= 2x`` the baseline; None / identity within
  5%, timed interleaved with the baseline, and whether they compiled to the baseline's
  program).
* ``model``: for each registered mechanism (``configs/mechanisms.py:<name>`` with a small
  model: 2 layers, d_model 64, 4 heads, batch 1) and each sequence length (default 1k and
  8k): parameter count, forward+backward FLOPs from XLA's ``cost_analysis`` (loops counted
  once by XLA, so the chunked path's figure is a lower bound), compiled temporary memory
  (``memory_analysis``) and the median time of a loss+gradient step. One table, one JSON file.

Needs a source checkout (it reads ``configs/mechanisms.py`` beside the package), as after
the README's ``pip install -e .``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import traceback
from typing import Any, Callable

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


# ---------------------------------------------------------------------------------------------
# Op level: the attention call alone.

OP_SHAPE = dict(batch=1, heads=8, head_dim=64)
TEMP_LIMIT_MIB = 256.0
TIME_LIMIT = 2.0  # x plain chunked softmax
SAME_SPEED = 0.05  # score_mod=None / identity vs plain chunked


def _op_cases(heads: int, head_dim: int, seq: int) -> dict[str, Callable[..., Any]]:
  """name -> ``make(rng) -> (fn(q, k, v, *params), params)``; every call is causal."""
  from attnlab.core import common  # pylint: disable=g-import-not-at-top
  from attnlab.core.mechanisms import _scores  # pylint: disable=g-import-not-at-top
  h, d = heads, head_dim
  slopes = jnp.asarray(attnlab.alibi_slopes(h))

  def attn(**kw):
    return lambda q, k, v, *p: attnlab.attention(q, k, v, is_causal=True, **kw)

  def mech(name):
    """A mechanism with a memory-efficient path, on its own example inputs."""
    def make(rng):
      kw = _scores.EXAMPLES[name](rng, h, d, seq)
      arrays = {n: x for n, x in kw.items() if isinstance(x, jax.Array)}
      static = {n: x for n, x in kw.items() if n not in arrays}

      def fn(q, k, v, *p):
        return attnlab.attention(q, k, v, mechanism=name, implementation="chunked",
                                 is_causal=True, **dict(zip(arrays, p)), **static)
      return fn, tuple(arrays.values())
    return make

  cases = {
      "softmax": lambda rng: (attn(implementation="chunked"), ()),
      "softmax+score_mod=None": lambda rng: (attn(implementation="chunked", score_mod=None), ()),
      "softmax+identity": lambda rng: (attn(implementation="chunked",
                                            score_mod=lambda s, *_: s), ()),
      "sigmoid": lambda rng: (attn(mechanism="sigmoid", implementation="chunked"), ()),
      "sigmoid+identity": lambda rng: (attn(mechanism="sigmoid", implementation="chunked",
                                            score_mod=lambda s, *_: s), ()),
      "alibi(native)": lambda rng: (attn(implementation="chunked", alibi_slopes=slopes), ()),
      "alibi(score_mod)": lambda rng: (
          lambda q, k, v, sl: attnlab.attention(q, k, v, is_causal=True,
                                                implementation="chunked",
                                                score_mod=common.alibi_score_mod(sl)),
          (slopes,)),
      "softcap(native)": lambda rng: (attn(implementation="chunked", softcap=30.0), ()),
      "softcap(score_mod)": lambda rng: (attn(implementation="chunked",
                                              score_mod=common.softcap_score_mod(30.0)), ()),
  }
  # Every mechanism with a score_mod path (registered with an example in its own file).
  cases.update({name: mech(name) for name in sorted(_scores.EXAMPLES)})
  return cases


OP_CASES = tuple(_op_cases(8, 64, 16))


def _op_step(name: str, seq: int) -> tuple[Callable[..., Any], tuple]:
  """(jitted forward+backward step, its arguments) of op case ``name`` at ``seq``."""
  b, h, d = OP_SHAPE["batch"], OP_SHAPE["heads"], OP_SHAPE["head_dim"]
  rng = np.random.RandomState(0)
  fn, params = _op_cases(h, d, seq)[name](rng)
  q, k, v = (jnp.asarray(rng.standard_normal((b, seq, h, d)), jnp.float32) for _ in range(3))
  ct = jnp.asarray(rng.standard_normal((b, seq, h, d)), jnp.float32)

  def loss(q, k, v, *p):
    return jnp.sum(fn(q, k, v, *p).astype(jnp.float32) * ct)

  step = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(3 + len(params)))))
  return step, (q, k, v, *params)


def _op_row(name: str, seq: int, runs: int) -> dict[str, Any]:
  step, args = _op_step(name, seq)
  row = {"level": "op", "mechanism": name, "seq": seq, **OP_SHAPE, "dtype": "float32",
         "mask": "causal", "pass": "forward+backward"}
  row.update(harness.compiled_stats(step, *args))
  row.update(harness.time_fn(step, *args, warmup=1, runs=runs))
  row["temp_mib"] = row.get("temp_bytes", 0) / harness.MIB
  return row


SAME_SPEED_GROUP = ("softmax", "softmax+score_mod=None", "softmax+identity")


def _same_speed_times(rows: list[dict[str, Any]], seq: int, rounds: int) -> None:
  """Time plain chunked softmax, ``score_mod=None`` and the identity score_mod in turn
  (``harness.interleaved_min``) and record ``interleaved_min_s`` / ``interleaved_ratio``:
  back-to-back separate timings of one program differ by ~10% on a shared CPU."""
  steps = {n: _op_step(n, seq) for n in SAME_SPEED_GROUP}
  mins = harness.interleaved_min(
      {n: (lambda s=s, a=a: s(*a)) for n, (s, a) in steps.items()}, rounds)
  for r in rows:
    if r.get("level") == "op" and r.get("seq") == seq and r["mechanism"] in mins:
      r["interleaved_min_s"] = mins[r["mechanism"]]
      r["interleaved_ratio"] = mins[r["mechanism"]] / mins["softmax"]
      r["interleaved_rounds"] = rounds


def _op_verdicts(rows: list[dict[str, Any]]) -> None:
  """Add time ratios to plain chunked softmax and the issue's pass/fail flags, per seq.

  Ratios use the min over the timed runs (a shared CPU adds load spikes to single runs; the
  median ratio is kept too). For None / identity score_mods, ``same_program`` records whether
  the optimised program equals the baseline's (``harness.program_fingerprint``: the score_mod
  compiled away), and the time check uses the interleaved timing when there is one.
  """
  base = {r["seq"]: r for r in rows if r.get("mechanism") == "softmax" and "min_s" in r}
  for r in rows:
    b = base.get(r["seq"])
    if b is None or "min_s" not in r:
      continue
    r["time_ratio"] = r["min_s"] / b["min_s"]
    r["median_time_ratio"] = r["median_s"] / b["median_s"]
    r["ok_temp"] = r["temp_mib"] <= TEMP_LIMIT_MIB
    if r["mechanism"] in ("softmax+score_mod=None", "softmax+identity"):
      ratio = r.get("interleaved_ratio", r["time_ratio"])
      r["ok_time"] = abs(ratio - 1.0) <= SAME_SPEED
      r["same_program"] = r.get("program") is not None and r.get("program") == b.get(
          "program")
    elif r["mechanism"] != "softmax":
      r["ok_time"] = r["time_ratio"] <= TIME_LIMIT


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(prog="python -m attnlab.bench mechanisms", description=__doc__)
  p.add_argument("--seq", type=int, nargs="+", default=[1024, 8192])
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--only", nargs="*", default=None, help="mechanism names (default: all)")
  p.add_argument("--out", default="results")
  p.add_argument("--level", choices=("op", "model", "all"), default="all",
                 help="op: the attention call alone (OP_CASES); model: every catalogue entry "
                      "in a small MQAR model; all: both")
  a = p.parse_args(argv)
  import attnlab.nn  # noqa: F401  (registers module-level mechanisms)
  names = a.only or attnlab.list_mechanisms()
  known = set(attnlab.list_mechanisms()) | set(OP_CASES)
  unknown = sorted(set(names) - known)
  if unknown:
    raise ValueError(f"--only: unknown mechanisms {unknown}; known: {sorted(known)}")
  rows, path = [], None
  if a.level == "op":
    names = []
  else:
    names = [n for n in names if n in attnlab.list_mechanisms()]
  for seq in a.seq:
    for i, name in enumerate(names):
      print(f"[{i + 1}/{len(names)}] seq {seq} {name}", flush=True)
      row = {"level": "model", "mechanism": name, "kind": attnlab.get_mechanism(name).kind,
             "seq": seq}
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
  if a.level in ("op", "all"):
    op_names = [n for n in OP_CASES if a.only is None or n in a.only]
    if op_names and op_names[0] != "softmax":
      op_names = ["softmax"] + op_names  # the baseline of the ratios
    for seq in a.seq:
      for i, name in enumerate(op_names):
        print(f"[op {i + 1}/{len(op_names)}] seq {seq} {name}", flush=True)
        try:
          rows.append(_op_row(name, seq, a.runs))
        except Exception as e:  # report and go on
          rows.append({"level": "op", "mechanism": name, "seq": seq,
                       "error": f"{type(e).__name__}: {e}"[:300]})
          traceback.print_exc()
        _op_verdicts(rows)
        path = harness.write_json("mechanisms", {"rows": rows, "complete": False}, a.out,
                                  path=path)
      if set(SAME_SPEED_GROUP) <= set(op_names):
        print(f"[op] seq {seq}: interleaved timing of {', '.join(SAME_SPEED_GROUP)}",
              flush=True)
        _same_speed_times(rows, seq, max(a.runs, 5))
        _op_verdicts(rows)
    op_rows = [r for r in rows if r.get("level") == "op"]
    harness.print_table(op_rows, ["mechanism", "seq", "temp_mib", "median_s", "min_s",
                                  "time_ratio", "interleaved_ratio", "ok_temp", "ok_time",
                                  "same_program", "error"])
  path = harness.write_json("mechanisms", {"rows": rows, "complete": True}, a.out, path=path)
  model_rows = [r for r in rows if r.get("level") == "model"]
  if model_rows:
    harness.print_table(model_rows, ["mechanism", "kind", "seq", "params", "gflops",
                                     "temp_mib", "median_s", "error"])
  print(f"wrote {path}")
