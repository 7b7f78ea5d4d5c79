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
  "compare"           the budget of ``python -m attnlab.train.compare --config compare`` (the
                      MQAR comparison page, results/cpu/mqar_compare): the default task
                      (64 tokens, 8 key-value pairs, all queried, vocabulary 256) with a
                      smaller model (d_model 64, mlp 128) and batch 32, for 2000 steps of a
                      warmup-stable-decay schedule (50 warmup steps, peak 3e-3 until step
                      1600, linear decay to 0 over the last 400: a constant rate through the
                      recall phase transition, then a decay to settle); eval every 250 steps
                      on 256 validation sequences (2048 answers); one checkpoint, at the end.
                      Measured (softmax, constant 3e-3, shared 2-core CPU, ~0.12-0.22 s/step):
                      eval accuracy 0.13 at step 300-800 (the plateau), 0.31 at 900, 0.62 at
                      1100, 0.86 at 1300, 0.91 at 1400. The d_model 128 model of the default
                      stayed on the plateau for 1100 steps at batch 16, and a 32-token /
                      4-pair / vocabulary-64 task for 400 steps, so neither is cheaper. With
                      this schedule softmax ends at 0.997 / 0.997 / 0.996 (seeds 0 / 1 / 2;
                      seed 0: 0.37 at 1000, 0.70 at 1250, 0.94 at 1500, 0.98 at 1750); a run
                      took 6-12 min of wall time on the loaded CPU. The page has the curves.
"""

from attnlab import data
from attnlab.train.config_lib import base_config


def get_config(arg: str = ""):
  arg = (arg or "").strip()
  if arg not in ("", "local", "runlocal", "compare"):
    raise ValueError(f"configs/mqar.py: unknown argument {arg!r}; use '', 'local' or "
                     "'compare'")
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

  if arg == "compare":
    c.total_steps = 2000
    c.batch_size = 32
    c.model.d_model = 64
    c.model.mlp_dim = 128
    c.schedule.warmup_steps = 50
    c.schedule.name = "wsd"
    c.schedule.decay_fraction = 0.2
    c.schedule.end_lr_fraction = 0.0
    c.log_every = 250
    c.eval_every = 250
    c.eval_steps = 2
    c.checkpoint_every = c.total_steps
    c.keep_checkpoints = 1

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
