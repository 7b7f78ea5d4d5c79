"""The synthetic 2D "grid_quadrant" task (attnlab/data/grid_tasks.py): labels against an
independent reading of the grid, determinism, its pipeline registration and bad arguments."""

import chex
import numpy as np
import pytest

from attnlab import data as attn_data
from attnlab.data.grid_tasks import GridQuadrantSource


def _naive_label(inputs: np.ndarray, height: int, width: int) -> tuple[int, int, int]:
  """(row, col, quadrant) of the one non-corner cell holding the corner's token, by a loop."""
  grid = inputs.reshape(height, width)
  hits = [(r, c) for r in range(height) for c in range(width)
          if (r, c) != (0, 0) and grid[r, c] == grid[0, 0]]
  assert len(hits) == 1, hits
  r, c = hits[0]
  top, left = r < height / 2, c < width / 2
  return r, c, {(True, True): 0, (True, False): 1, (False, True): 2, (False, False): 3}[
      (top, left)]


@pytest.mark.parametrize("height,width,levels,colors,distractors", [
    (8, 8, 4, 8, 8), (4, 6, 1, 2, 5), (4, 4, 3, 3, 0), (6, 4, 2, 5, 22)])
def test_labels_match_a_naive_reading(height, width, levels, colors, distractors):
  src = GridQuadrantSource(grid_height=height, grid_width=width, num_levels=levels,
                           num_colors=colors, num_distractors=distractors, num_examples=60,
                           seed=3)
  assert src.seq_len == height * width and src.num_classes == 4
  assert src.vocab_size == 2 + levels + colors
  first_color = 2 + levels
  labels = []
  for i in range(len(src)):
    ex = src[i]
    assert set(ex) == {"inputs", "weights", "label"}
    x, w, y = ex["inputs"], ex["weights"], ex["label"]
    chex.assert_shape([x, w, y], [(height * width,), (height * width,), ()])
    assert x.dtype == np.int32 and w.dtype == np.float32 and y.dtype == np.int32
    assert (w == 1).all()
    assert ((x >= 2) & (x < 2 + levels + colors)).all()
    assert x[0] >= first_color  # the corner holds a colour
    r, c, quad = _naive_label(x, height, width)
    assert int(y) == quad
    # Every other mark has another colour; the marks count is target + distractors.
    marks = np.flatnonzero(x >= first_color)
    assert len(marks) == 2 + distractors
    labels.append(quad)
  assert set(labels) == {0, 1, 2, 3}


def test_labels_are_balanced_and_splits_differ():
  src = GridQuadrantSource(num_examples=2000, seed=0)
  counts = np.bincount([int(src[i]["label"]) for i in range(len(src))], minlength=4)
  assert counts.min() > 400, counts  # uniform quadrants: 500 each, std ~19
  val = GridQuadrantSource(num_examples=20, seed=0, split="validation")
  assert any(not np.array_equal(src[i]["inputs"], val[i]["inputs"]) for i in range(20))


def test_deterministic_from_seed():
  a = GridQuadrantSource(grid_height=6, grid_width=6, num_examples=10, seed=7)
  b = GridQuadrantSource(grid_height=6, grid_width=6, num_examples=10, seed=7)
  c = GridQuadrantSource(grid_height=6, grid_width=6, num_examples=10, seed=8)
  for i in range(10):
    chex.assert_trees_all_equal(a[i], b[i])
  chex.assert_trees_all_equal(a[-1], a[9])
  assert any(not np.array_equal(a[i]["inputs"], c[i]["inputs"]) for i in range(10))
  with pytest.raises(IndexError, match="index"):
    a[10]


def test_pipeline_registration():
  cfg = attn_data.default_data_config("grid_quadrant")
  cfg.grid_height, cfg.grid_width, cfg.seq_len = 4, 6, 24
  cfg.num_distractors = 3
  cfg.num_train_examples, cfg.num_validation_examples = 32, 10
  assert attn_data.num_classes(cfg) == 4
  assert attn_data.vocab_size(cfg) == 2 + cfg.num_levels + cfg.num_colors
  batch = next(iter(attn_data.make_dataset(cfg, "validation", global_batch_size=4, seed=0)))
  src = GridQuadrantSource(grid_height=4, grid_width=6, num_levels=cfg.num_levels,
                           num_colors=cfg.num_colors, num_distractors=3, num_examples=10,
                           split="validation")
  for i in range(4):
    chex.assert_trees_all_equal({k: v[i] for k, v in batch.items()}, src[i])
  train = next(iter(attn_data.make_dataset(cfg, "train", global_batch_size=8, seed=1)))
  chex.assert_shape([train["inputs"], train["label"]], [(8, 24), (8,)])


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(grid_height=7), ValueError, "grid_height must be even.*7"),
    (dict(grid_width=2), ValueError, "grid_width must be >= 4"),
    (dict(grid_width=4.0), TypeError, "grid_width must be an int"),
    (dict(num_levels=0), ValueError, "num_levels must be >= 1"),
    (dict(num_colors=1), ValueError, "num_colors must be >= 2"),
    (dict(grid_height=4, grid_width=4, num_distractors=15), ValueError,
     "num_distractors must be <= 14"),
    (dict(num_distractors=-1), ValueError, "num_distractors must be >= 0"),
    (dict(num_examples=0), ValueError, "num_examples must be >= 1"),
])
def test_bad_arguments(kwargs, exc, match):
  args = dict(num_examples=4)
  args.update(kwargs)
  with pytest.raises(exc, match=match):
    GridQuadrantSource(**args)


def test_pipeline_bad_seq_len():
  cfg = {"name": "grid_quadrant", "grid_height": 4, "grid_width": 4, "seq_len": 15}
  with pytest.raises(ValueError, match=r"seq_len must equal grid_height \* grid_width.*16.*15"):
    attn_data.make_dataset(cfg, "train", global_batch_size=2, seed=0)
