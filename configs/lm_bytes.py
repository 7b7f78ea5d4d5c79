r"""Byte-level decoder LM on the Python standard library's source (THE default main job).

  python -m attnlab.train --config configs/lm_bytes.py --workdir /tmp/attnlab_lm
  python -m attnlab.train --config configs/lm_bytes.py:local --workdir /tmp/attnlab_smoke

A 4-layer, d_model 128 pre-LN transformer (4 heads, RoPE, GELU MLP 256, ~0.6M parameters)
trained with AdamW (peak 3e-3, warmup 50 + cosine) for 600 steps of 16 x 128-byte windows of
the stdlib ``*.py`` files (vocab 256; ~1.2M tokens seen). Validation bits per byte fall from 8
to ~2.1 (2.12 measured: 6 min wall on a 2-core CPU shared with other jobs, the run getting
about half a core). Arguments after the colon:

  ""                  the default run
  "local"/"runlocal"  a tiny smoke-test variant (seconds)
"""

from attnlab import data
from attnlab.train.config_lib import base_config


def get_config(arg: str = ""):
  arg = (arg or "").strip()
  if arg not in ("", "local", "runlocal"):
    raise ValueError(f"configs/lm_bytes.py: unknown argument {arg!r}; use '' or 'local'")
  c = base_config()
  c.seed = 0
  c.total_steps = 600
  c.batch_size = 16
  c.grad_accum_steps = 1

  c.data = data.default_data_config("bytes")
  c.data.seq_len = 128
  c.data.max_mb = 16.0
  c.data.validation_fraction = 0.05

  c.model.name = "decoder_lm"
  c.model.num_layers = 4
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.mlp_dim = 256
  c.model.mlp = "gelu"
  c.model.norm = "layernorm"
  c.model.position = "rope"
  c.model.dropout = 0.0
  c.model.max_len = 128
  c.model.tie_embeddings = False
  c.model.dtype = "float32"
  c.model.attention.mechanism = "softmax"
  c.model.attention.implementation = "auto"

  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 3e-3
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip_norm = 1.0
  c.schedule.name = "warmup_cosine"
  c.schedule.warmup_steps = 50
  c.schedule.end_lr_fraction = 0.1

  c.mesh.shape = (-1, 1, 1)
  c.mesh.axes = ("data", "fsdp", "tensor")

  c.log_every = 50
  c.eval_every = 150
  c.eval_steps = 8
  c.eval_batch_size = 32
  c.checkpoint_every = 300
  c.keep_checkpoints = 2

  if arg in ("local", "runlocal"):
    c.total_steps = 20
    c.batch_size = 8
    c.data.seq_len = 32
    c.data.max_mb = 1.0
    c.model.num_layers = 1
    c.model.d_model = 32
    c.model.num_heads = 2
    c.model.mlp_dim = 64
    c.model.max_len = 32
    c.schedule.warmup_steps = 5
    c.log_every = 5
    c.eval_every = 10
    c.eval_steps = 2
    c.eval_batch_size = 8
    c.checkpoint_every = 10
  return c
