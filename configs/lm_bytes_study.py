r"""Byte LM for the study known answers (induction heads, first-token sink): issue 12.

  nice -n 10 python -m attnlab.train --config configs/lm_bytes_study.py --workdir /tmp/lm_study
  python -m attnlab.analysis induction --workdir /tmp/lm_study --seq-len 129 --batch 16 \
      --inputs repeated --token-range 32,127
  python results/cpu/analysis/lm_steps.py /tmp/lm_study   # every checkpoint (see NOTES.md)

The default byte LM (configs/lm_bytes.py: 4 layers, 128-byte windows, 600 steps) had formed
neither induction heads nor a sink. Induction heads are a two-layer circuit (a previous-token
head feeding a head whose key is "the token before me"; Olsson et al., "In-context Learning
and Induction Heads", arXiv 2209.11895) that forms early in training on text whose context
holds repeats. This variant favours it on the same data (the Python standard library's
source, where identifiers repeat within a window): 2 layers x 4 heads (the minimal depth for
the circuit, more heads per layer) of d_model 64 (head_dim 16, ~0.11M parameters: cheap on a
shared CPU), 256-byte windows (more repeats in context), 2,400 steps of 8 windows (~4.9M
bytes seen), checkpoints every 200 steps (kept) so that the scores can be followed over
training. Arguments after the colon:

  ""                  the study run
  "repeats"           the same model trained on a repeat-augmented copy of the corpus: each
                      stdlib file with half of its segments (24-96 bytes, drawn per file
                      from a fixed seed) written twice in a row, so that 256-byte windows
                      hold exact repeats (in-context copying pays); 3,000 steps. The copy is
                      written once to REPEAT_DIR by this config
                      (deterministic; the train/validation split follows the file paths as
                      for the original corpus).
  "repeats_all"       the same with every segment (16-64 bytes) written twice
                      (REPEAT_DIR + "_all"), 3,000 steps.
  "induction"         the same model on stdlib windows of 64 bytes with two edits made by
                      the data pipeline (data keys ``bos``, ``repeat_prob``, ``repeat_len``;
                      see attnlab/data/text.py): every window starts with byte 0 (the
                      corpus's file separator, used as BOS), and every window holds a random
                      printable string of 8-24 bytes written twice (~25% of the bytes are a
                      second copy, predictable only by copying; the text repeats of
                      "repeats"/"repeats_all" were mostly predictable without it). Batch 64,
                      3,000 steps (~12M bytes), checkpoints every 250; max_len 256, so that
                      the analysis can run on longer inputs (RoPE). Windows of 256 bytes
                      formed no induction head in 2,000 steps of batch 32 (half of the
                      windows with a 16-64-byte repeat) nor in 2,000 steps (every window
                      with a 32-112-byte repeat): results/cpu/analysis/NOTES.md.
  "local"/"runlocal"  a tiny smoke-test variant (seconds)
"""

import importlib.util
import os


def _load_sibling(name: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"attnlab_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


REPEAT_DIR = "/tmp/attnlab_stdlib_repeats"


def write_repeat_corpus(out_dir: str = REPEAT_DIR, seed: int = 0, *, prob: float = 0.5,
                        low: int = 24, high: int = 96) -> str:
  """The repeat-augmented stdlib copy (see the docstring): segments of ``low..high`` bytes,
  each written twice with probability ``prob``. Returns ``out_dir``."""
  import hashlib  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from attnlab.data import text  # pylint: disable=g-import-not-at-top
  done = os.path.join(out_dir, ".complete")
  if os.path.exists(done):
    return out_dir
  root, files = text.list_corpus_files()
  for path in files:
    rel = path.relative_to(root).as_posix()
    digest = hashlib.md5(f"{seed}:{rel}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    data, pos, parts = path.read_bytes(), 0, []
    while pos < len(data):
      seg = data[pos:pos + int(rng.integers(low, high + 1))]
      parts.append(seg + seg if rng.random() < prob else seg)
      pos += len(seg)
    target = os.path.join(out_dir, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as f:
      f.write(b"".join(parts))
  open(done, "w").close()
  return out_dir


def get_config(arg: str = ""):
  arg = (arg or "").strip()
  if arg not in ("", "repeats", "repeats_all", "induction", "local", "runlocal"):
    raise ValueError(f"configs/lm_bytes_study.py: unknown argument {arg!r}; use '', "
                     "'repeats', 'repeats_all', 'induction' or 'local'")
  c = _load_sibling("lm_bytes").get_config(arg if arg in ("local", "runlocal") else "")
  if arg in ("local", "runlocal"):
    return c
  c.total_steps = 2400
  c.batch_size = 8
  c.data.seq_len = 256
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.d_model = 64
  c.model.max_len = 256
  c.schedule.warmup_steps = 100
  c.eval_every = 200
  c.eval_steps = 4
  c.checkpoint_every = 200
  c.keep_checkpoints = 12
  if arg == "repeats_all":
    c.data.dir = write_repeat_corpus(REPEAT_DIR + "_all", prob=1.0, low=16, high=64)
    c.data.file_pattern = "*.py"
    c.total_steps = 3000
    c.keep_checkpoints = 16
  if arg == "induction":
    c.data.bos = 0
    c.data.seq_len = 64
    c.data.repeat_prob = 1.0
    c.data.repeat_len = (8, 24)
    c.batch_size = 64
    c.total_steps = 3000
    c.checkpoint_every = 250
    c.keep_checkpoints = 12
  if arg == "repeats":
    c.data.dir = write_repeat_corpus()
    c.data.file_pattern = "*.py"
    c.total_steps = 3000
    c.keep_checkpoints = 16
  return c
