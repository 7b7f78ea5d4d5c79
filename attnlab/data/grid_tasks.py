"""Synthetic 2D (image-like) classification tasks for the grid mechanisms, generated on the fly.

The example is an ``H x W`` grid of patch tokens, flattened row-major into a sequence of
``H * W`` tokens (the layout the grid mechanisms read through ``grid_shape=(H, W)``). Every
example is a pure function of ``(seed, split, index)``, as in ``attnlab.data.synthetic``.

"grid_quadrant" (``GridQuadrantSource``): which quadrant holds the marked patch?

* background: every cell is a random intensity level, tokens ``[2, 2 + num_levels)``
  (distractor noise carrying no information);
* cue: the corner cell ``(0, 0)`` holds a colour ``c`` (tokens ``[2 + num_levels, 2 +
  num_levels + num_colors)``);
* target: exactly one other cell holds the same colour ``c``; its quadrant (drawn uniformly,
  then a uniform cell of it other than the corner) is the label: ``2 * (row >= H / 2) +
  (col >= W / 2)``, 4 classes;
* distractors: ``num_distractors`` further cells hold colours drawn from the other
  ``num_colors - 1`` colours (repeats allowed), so a marked cell looks like the target
  locally: only its equality with the corner's colour tells them apart.

Why it needs global context: the cue sits in the corner and the target anywhere in the grid, so
the comparison that identifies the target spans the whole image. A classifier reading the
corner cell (``pooling="cls"`` in ``configs/grid2d.py``) must route information from an
arbitrary cell to ``(0, 0)``; a local window around the corner (or around the target) answers
only when the target happens to lie close to the corner, and counting marks per quadrant
(bag-of-patches) says little: the target's quadrant holds one mark more, among distractors
placed uniformly. Chance is 25%.

Example format (as the "mqar_classification" and "tfds" classification tasks)::

  inputs  int32   [H * W]  patch tokens, row-major
  weights float32 [H * W]  all 1 (no padding)
  label   int32   []       quadrant of the target, in [0, 4)

Tokens ``0`` (PAD) and ``1`` (SEP) are never used, so ``vocab_size = 2 + num_levels +
num_colors``. Inspired by the Long Range Arena's image tasks (arXiv 2011.04006); the task
itself is ours (no download).
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from attnlab.data._checks import check_int
from attnlab.data.synthetic import SyntheticSource

Example = dict[str, np.ndarray]

FIRST_LEVEL = 2  # tokens 0 (PAD) and 1 (SEP) stay unused
NUM_QUADRANTS = 4


class GridQuadrantSource(SyntheticSource):
  """"Which quadrant holds the patch whose colour matches the corner?" (module docstring).

  Args:
    grid_height, grid_width: grid sides ``H``, ``W``; even (quadrants are halves) and >= 4
      (so that the corner's quadrant has free cells).
    num_levels: background intensity levels, >= 1.
    num_colors: mark colours, >= 2 (the target's colour and at least one other).
    num_distractors: marks of other colours, in ``[0, H * W - 2]``.
    num_examples, seed, split: as ``SyntheticSource``.
  """

  def __init__(self, *, grid_height: int = 16, grid_width: int = 16, num_levels: int = 4,
               num_colors: int = 8, num_distractors: int = 8, num_examples: int,
               seed: int = 0, split: str = "train"):
    self.grid_height = check_int("grid_height", grid_height, minimum=4)
    self.grid_width = check_int("grid_width", grid_width, minimum=4)
    for name, side in (("grid_height", self.grid_height), ("grid_width", self.grid_width)):
      if side % 2:
        raise ValueError(f"{name} must be even (the quadrants are halves of the grid), got "
                         f"{name}={side}.")
    self.num_levels = check_int("num_levels", num_levels, minimum=1)
    self.num_colors = check_int("num_colors", num_colors, minimum=2)
    cells = self.grid_height * self.grid_width
    self.num_distractors = check_int("num_distractors", num_distractors, minimum=0,
                                     maximum=cells - 2)
    super().__init__(seq_len=cells, vocab_size=FIRST_LEVEL + self.num_levels + self.num_colors,
                     num_examples=num_examples, seed=seed, split=split)
    self.num_classes = NUM_QUADRANTS
    self.first_color = FIRST_LEVEL + self.num_levels
    # Cells of each quadrant, the corner (0, 0) excluded (it holds the cue).
    rows, cols = np.divmod(np.arange(cells), self.grid_width)
    quads = 2 * (rows >= self.grid_height // 2) + (cols >= self.grid_width // 2)
    self._quadrant_cells = [np.flatnonzero((quads == q) & (np.arange(cells) > 0))
                            for q in range(NUM_QUADRANTS)]

  def generate(self, rng: np.random.Generator) -> Example:
    h, w = self.grid_height, self.grid_width
    cells = h * w
    grid = rng.integers(FIRST_LEVEL, FIRST_LEVEL + self.num_levels, size=cells)
    color = rng.integers(self.num_colors)
    label = rng.integers(NUM_QUADRANTS)
    target = rng.choice(self._quadrant_cells[label])
    free = np.setdiff1d(np.arange(1, cells), [target])
    spots = rng.choice(free, size=self.num_distractors, replace=False)
    others = rng.integers(self.num_colors - 1, size=self.num_distractors)
    others = others + (others >= color)  # every colour but the cue's
    grid[spots] = self.first_color + others
    grid[0] = grid[target] = self.first_color + color
    return {
        "inputs": grid.astype(np.int32),
        "weights": np.ones(cells, dtype=np.float32),
        "label": np.asarray(label, dtype=np.int32),
    }

  def _params(self) -> dict[str, Any]:
    return dict(grid_height=self.grid_height, grid_width=self.grid_width,
                num_levels=self.num_levels, num_colors=self.num_colors,
                num_distractors=self.num_distractors, num_examples=self.num_examples,
                seed=self.seed, split=self.split)


def grid_quadrant_dataset(**kwargs: Any) -> grain.MapDataset:
  """``grain.MapDataset`` over ``GridQuadrantSource(**kwargs)``."""
  return grain.MapDataset.source(GridQuadrantSource(**kwargs))

