r"""Multi-query associative recall (MQAR, Zoology arXiv 2312.04927) with a small decoder.

  python -m attnlab.train --config configs/mqar.py --workdir /tmp/attnlab_mqar
  python -m attnlab.train --config configs/mqar.py:local --workdir /tmp/attnlab_mqar_smoke
  python -m attnlab.train --config configs/mqar.py --workdir /tmp/mqar_sigmoid \
      --config.model.attention.mechanism=sigmoid

The loss and accuracy count only the answer positions (``weights``), so ``eval/accuracy`` is
the recall accuracy. Arguments after the colon:

  ""                  2 layers, d_model 128, 64 tokens with 8 key-value pairs, 3000 steps of
                      64 sequences. On a shared 2-core CPU, 600 steps take ~5 min and reach
                      ~13% eval accuracy (above the 1/128 chance level, before the recall
                      "phase transition"); the full run was not verified to solve the task.
  "local"/"runlocal"  a tiny smoke-test variant (seconds)
"""

from attnlab import data
from attnlab.train.config_lib import base_config


def get_config(arg: str = ""):
  arg = (arg or "").strip()
  if arg not in ("", "local", "runlocal"):
    raise ValueError(f"configs/mqar.py: unknown argument {arg!r}; use '' or 'local'")
  c = base_config()
  c.seed = 0
  c.total_steps = 3000
  c.batch_size = 64
  c.grad_accum_steps = 1

  c.data = data.default_data_config("mqar")
  c.data.seq_len = 64
  c.data.vocab_size = 256
  c.data.num_kv_pairs = 8
  c.data.num_queries = 0  # all keys queried, as Zoology
  c.data.num_train_examples = 100_000
  c.data.num_validation_examples = 1_000

  c.model.name = "decoder_lm"
  c.model.num_layers = 2
  c.model.d_model = 128
  c.model.num_heads = 2
  c.model.mlp_dim = 256
  c.model.position = "rope"
  c.model.dropout = 0.0
  c.model.max_len = 64
  c.model.attention.mechanism = "softmax"
  c.model.attention.implementation = "auto"

  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 3e-3
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip_norm = 1.0
  c.schedule.name = "warmup_cosine"
  c.schedule.warmup_steps = 100
  c.schedule.end_lr_fraction = 0.0

  c.mesh.shape = (-1, 1, 1)
  c.mesh.axes = ("data", "fsdp", "tensor")

  c.log_every = 100
  c.eval_every = 500
  c.eval_steps = 8
  c.eval_batch_size = 128
  c.checkpoint_every = 1000
  c.keep_checkpoints = 2

  if arg in ("local", "runlocal"):
    c.total_steps = 20
    c.batch_size = 8
    c.data.seq_len = 32
    c.data.vocab_size = 64
    c.data.num_kv_pairs = 4
    c.data.num_train_examples = 1_000
    c.data.num_validation_examples = 64
    c.model.num_layers = 1
    c.model.d_model = 32
    c.model.mlp_dim = 64
    c.model.max_len = 32
    c.schedule.warmup_steps = 5
    c.log_every = 5
    c.eval_every = 10
    c.eval_steps = 2
    c.eval_batch_size = 8
    c.checkpoint_every = 10
  return c
