r"""2D task for the grid mechanisms: "which quadrant holds the patch matching the corner?"

  python -m attnlab.train --config configs/grid2d.py --workdir /tmp/grid2d_softmax
  python -m attnlab.train --config configs/grid2d.py:axial --workdir /tmp/grid2d_axial
  python -m attnlab.train --config configs/grid2d.py:local --workdir /tmp/grid2d_smoke
  python -m attnlab.train.compare --configs configs/grid2d.py --workdir /tmp/grid2d_runs \
      --seeds 0 1 2 --out results/cpu/grid2d

Trains an encoder classifier (``model.name = "encoder_classifier"``, ``pooling = "cls"``: the
class is read from the corner cell, which holds the cue) on the synthetic ``grid_quadrant``
task of ``attnlab/data/grid_tasks.py``: an 8 x 8 grid of patch tokens (4 background intensity
levels, 8 colours, 8 distractor marks), the corner's colour repeated in exactly one other cell,
label = that cell's quadrant (4 classes, chance 25%). The sequence is the grid in row-major
order; the grid mechanisms read it through ``grid_shape = (8, 8)``. Positions are learned
embeddings (added to the tokens), so a value carries its cell's position. 2 layers, d_model 64,
4 heads (71k parameters with softmax), 400 steps of 32 grids in the comparison.

Arguments after the colon: ``[<mechanism>][,HxW][,local]``.

  ""                  softmax (dense)
  "<mechanism>"       any catalogue entry: ``configs/mechanisms.py``'s overrides (model keys
                      only), then ``grid_overrides(<mechanism>, grid)`` (the 2D layout:
                      grid_shape, blocks and top-k sized for the grid)
  "HxW"               another grid, e.g. "16x16" (even sides >= 4)
  "local"             a tiny smoke-test variant (4 x 4 grid, 1 layer, seconds)

Measured (``results/cpu/grid2d/summary.md``: 400 steps, 3 seeds, on the shared 2-core CPU):
final eval accuracy softmax 1.000, vmoba 1.000, biformer 0.992 +- 0.009, moba 0.671 +- 0.190,
halo 0.380 +- 0.014 (local; its receptive field caps it at 0.625), axial 0.372 +- 0.024, fit
0.319 +- 0.038. Softmax (``configs/grid2d.py``) reaches 1.000 by step 250 in all three seeds.
"""

import importlib.util
import os
import re

from attnlab import data
from attnlab.train.config_lib import base_config

GRID = (8, 8)
LOCAL_GRID = (4, 4)
# What python -m attnlab.train.compare --configs configs/grid2d.py trains by default: softmax
# (dense baseline) and the catalogue's grid-aware / block-routed ones (grid_overrides below);
# all drawn in its curves.png, with the 4-class chance level.
COMPARE_NAMES = ("softmax", "axial", "biformer", "halo", "vmoba", "fit", "moba")
COMPARE_HIGHLIGHT = COMPARE_NAMES
COMPARE_CHANCE = 0.25

# 2D layouts of the grid mechanisms for a (H, W) grid: functions of the grid, since the local
# variant is smaller. Applied after configs/mechanisms.py's MQAR overrides (which use (-1, 8)).
# Sparse mechanisms keep about a quarter of the keys per query (top-k blocks / regions).
def grid_overrides(name: str, grid: tuple[int, int]) -> dict:
  h, w = grid
  side = 4 if min(h, w) >= 16 else 2
  table = {
      'axial': {'model.attention.kwargs.grid_shape': (h, w)},
      'biformer': {
          'model.attention.kwargs.grid_shape': (h, w),
          'model.attention.kwargs.region_size': side,
          'model.attention.kwargs.top_k': max(1, (h // side) * (w // side) // 4),
      },
      'halo': {
          'model.attention.kwargs.grid_shape': (h, w),
          'model.attention.kwargs.block_size': side,
          'model.attention.kwargs.halo': side // 2,
      },
      'vmoba': {
          'model.attention.kwargs.grid_shape': (h, w),
          'model.attention.kwargs.block_shape': (side, side),
          'model.attention.kwargs.top_k': max(1, (h // side) * (w // side) // 4),
      },
      'fit': {'model.attention.kwargs.group_size': w},  # a group = a grid row
      'moba': {  # a block = a grid row
          'model.attention.kwargs.block_size': w,
          'model.attention.kwargs.top_k': max(1, h // 4),
      },
  }
  return table.get(name, {})


def _load_sibling(name: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"attnlab_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str = ""):
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  local = bool({"local", "runlocal"} & set(parts))
  sizes = [p for p in parts if re.fullmatch(r"\d+x\d+", p)]
  names = [p for p in parts if p not in ("local", "runlocal") and p not in sizes]
  if len(names) > 1 or len(sizes) > 1:
    raise ValueError(f"configs/grid2d.py: one mechanism and one HxW grid at most, got "
                     f"{parts}; use '[<mechanism>][,HxW][,local]'")
  name = names[0] if names else "softmax"
  grid = LOCAL_GRID if local else GRID
  if sizes:
    grid = tuple(int(n) for n in sizes[0].split("x"))
    if min(grid) < 4 or any(n % 2 for n in grid):
      raise ValueError(f"configs/grid2d.py: the grid needs even sides >= 4, got {sizes[0]!r}")

  c = base_config()
  c.seed = 0
  c.total_steps = 400
  c.batch_size = 32
  c.grad_accum_steps = 1

  c.data = data.default_data_config("grid_quadrant")
  c.data.grid_height, c.data.grid_width = grid
  c.data.seq_len = grid[0] * grid[1]
  c.data.num_levels = 4
  c.data.num_colors = 8
  c.data.num_distractors = 8
  c.data.num_train_examples = 100_000
  c.data.num_validation_examples = 1_024

  c.model.name = "encoder_classifier"
  c.model.num_classes = data.num_classes(c.data)
  c.model.pooling = "cls"  # the corner cell holds the cue
  c.model.num_layers = 2
  c.model.d_model = 64
  c.model.num_heads = 4
  c.model.mlp_dim = 128
  c.model.position = "learned"
  c.model.dropout = 0.0
  c.model.max_len = c.data.seq_len
  c.model.attention.mechanism = "softmax"
  c.model.attention.implementation = "auto"

  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.weight_decay = 0.01
  c.optimizer.grad_clip_norm = 1.0
  c.schedule.name = "warmup_cosine"
  c.schedule.warmup_steps = 50
  c.schedule.end_lr_fraction = 0.1

  c.mesh.shape = (-1, 1, 1)
  c.mesh.axes = ("data", "fsdp", "tensor")

  c.log_every = 50
  c.eval_every = 50
  c.eval_steps = 8
  c.eval_batch_size = 128
  c.checkpoint_every = 400
  c.keep_checkpoints = 1

  if local:
    c.total_steps = 10
    c.batch_size = 8
    c.data.num_distractors = 3
    c.data.num_train_examples = 256
    c.data.num_validation_examples = 16
    c.model.num_layers = 1
    c.model.d_model = 32
    c.model.num_heads = 2
    c.model.mlp_dim = 64
    c.schedule.warmup_steps = 2
    c.log_every = 5
    c.eval_every = 5
    c.eval_steps = 2
    c.eval_batch_size = 8
    c.checkpoint_every = 10

  if name != "softmax":
    mechanisms = _load_sibling("mechanisms")
    overrides = mechanisms.overrides_for(name)
    model_keys = {k: v for k, v in overrides.items() if k.startswith("model.")}
    if model_keys.get("model.name", "encoder_classifier") != "encoder_classifier" or any(
        not k.startswith("model.") for k in overrides):
      raise ValueError(f"configs/grid2d.py: {name!r} changes the task or model kind "
                       f"({overrides}); the grid task needs an attention mechanism")
    model_keys.update(grid_overrides(name, grid))
    mechanisms.apply_overrides(c, model_keys)
  return c
