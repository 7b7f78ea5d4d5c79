r"""MQAR models for the retrieval-head known answer (issue 12, Study I).

  nice -n 10 python -m attnlab.train --config configs/mqar_study.py --workdir /tmp/mqar_study
  python -m attnlab.analysis retrieval --workdir /tmp/mqar_study --batch 256

The base task is the one used in results/cpu/analysis/NOTES.md (32 tokens, vocabulary 64,
4 key-value pairs, all keys queried; d_model 64, 2 layers). That 2 x 2-head model had two
redundant copy heads and two individually necessary previous-token heads, so ablating the
top retrieval head hurt less than ablating the lowest-ranked one. Arguments after the colon
(comma-separated ``key=value``):

  heads=N    heads per layer (default 4; head_dim = 64 / N)
  layers=N   number of layers (default 2)
  seed=N     training seed (default 0)
  wd=X       AdamW weight decay (default 0.0; configs/mqar.py uses 0.1)
  local      a tiny smoke-test variant (seconds)
"""

import importlib.util
import os


def _load_sibling(name: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"attnlab_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def parse_arg(arg: str) -> dict:
  out = dict(heads=4, layers=2, seed=0, wd=0.0, local=False)
  for part in (p.strip() for p in (arg or "").split(",")):
    if not part:
      continue
    if part in ("local", "runlocal"):
      out["local"] = True
      continue
    key, sep, value = part.partition("=")
    if not sep or key not in ("heads", "layers", "seed", "wd"):
      raise ValueError(f"configs/mqar_study.py: unknown argument {part!r}; expected "
                       "heads=N, layers=N, seed=N, wd=X or local")
    out[key] = float(value) if key == "wd" else int(value)
  return out


def get_config(arg: str = ""):
  opts = parse_arg(arg)
  c = _load_sibling("mqar").get_config("local" if opts["local"] else "")
  c.seed = opts["seed"]
  c.model.num_heads = opts["heads"]
  c.model.num_layers = opts["layers"]
  if opts["local"]:
    return c
  c.total_steps = 4000
  c.batch_size = 64
  c.data.seq_len = 32
  c.data.vocab_size = 64
  c.data.num_kv_pairs = 4
  c.model.d_model = 64
  c.model.mlp_dim = 128
  c.model.max_len = 32
  c.schedule.warmup_steps = 200
  c.optimizer.weight_decay = opts["wd"]
  c.eval_every = 500
  c.checkpoint_every = 500
  c.keep_checkpoints = 10
  return c
