"""The mechanism catalogue as a whole.

* Every catalogue entry trains a few MQAR steps from its config overrides: for each registered
  mechanism, ``configs/mechanisms.py:<name>,local`` (the tiny MQAR config plus the entry's
  overrides) trains 2 steps through the real trainer; the losses must be finite and the
  gradient norms positive.
* Every entry is documented (a paper with an arXiv id) and the README table is the output of
  ``python -m attnlab.catalogue --markdown``.
* The token-mixer and pooling entries' overrides load and build a model that runs (shapes
  only) on a batch of their data.
* "One mechanism, one place": a mechanism's name is written in at most two files of the
  package (its core file, which registers it, and its NNX module).
"""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import attnlab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARXIV_ID = re.compile(r"arXiv \d{4}\.\d{4,5}")


def _load_configs():
  path = os.path.join(ROOT, "configs", "mechanisms.py")
  spec = importlib.util.spec_from_file_location("attnlab_configs_mechanisms", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _all_names():
  import attnlab.models  # noqa: F401  (registers modules, pooling heads and variants)
  return attnlab.list_mechanisms()


@pytest.mark.parametrize("name", _all_names())
def test_mechanism_trains_mqar(name, tmp_path):
  from attnlab.train import trainer
  config = _load_configs().get_config(f"{name},local")
  # Two training steps and no eval: compiling the train step is most of the cost (~60 entries
  # on 2 CPU cores), and the eval step adds a second compile of the same forward pass.
  config.total_steps = 2
  config.schedule.warmup_steps = 1  # the local config warms up for 5 steps
  config.log_every = 1
  config.eval_every = 1000
  config.checkpoint_every = 1000
  trainer.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert len(losses) == 2, records
  assert np.all(np.isfinite(losses)), losses
  # The update did something: the grad norm is positive and finite.
  norms = [r["train/grad_norm"] for r in records if "train/grad_norm" in r]
  assert norms and all(np.isfinite(n) and n > 0 for n in norms), norms


def test_catalogue_lists_and_documents_everything():
  """Every entry names its paper with an arXiv id; the README table between the catalogue
  markers (after the explanatory paragraph) is ``python -m attnlab.catalogue --markdown``."""
  for name in _all_names():
    entry = attnlab.get_mechanism(name)
    assert entry.paper, f"{name}: no paper"
    assert ARXIV_ID.search(entry.paper), f"{name}: no arXiv id in {entry.paper!r}"
  out = subprocess.run([sys.executable, "-m", "attnlab.catalogue", "--markdown"], cwd=ROOT,
                       capture_output=True, text=True, check=True).stdout
  readme = pathlib.Path(ROOT, "README.md").read_text()
  block = readme.split("<!-- catalogue:start -->", 1)[1].split("<!-- catalogue:end -->", 1)[0]
  table = [line for line in block.splitlines() if line.startswith("|")]
  assert table, "README.md: no table between the catalogue markers"
  assert table == out.strip().splitlines(), (
      "README.md catalogue table is stale: paste `python -m attnlab.catalogue --markdown`")


def test_bad_mechanism_name_in_config():
  with pytest.raises(ValueError, match="unknown mechanism"):
    _load_configs().get_config("not_a_mechanism,local")


# The token mixers and pooling heads (the entries that replace attention or pool).
MIXER_ENTRIES = ["ninformer", "mixer_none", "mixer_fixed", "decon_approx", "decon_nonapprox",
                 "decon_staticqk", "tap_adl", "lowrank_mha_pool", "multilayer_pool"]


@pytest.mark.filterwarnings("ignore:.*sow.*:DeprecationWarning")
def test_catalogue_entries_documented_and_configs_build():
  """Every entry: paper with arXiv id, a description, complete overrides that load through
  configs/mechanisms.py:<name>,local and build a model that runs on a batch of that data."""
  from attnlab import data as data_lib
  from attnlab import models
  cfgs = _load_configs()
  for name in MIXER_ENTRIES:
    entry = attnlab.get_mechanism(name)
    assert "arXiv" in entry.paper and entry.description and cfgs.overrides_for(name), name
    config = cfgs.get_config(f"{name},local")
    if entry.kind == "pooling":
      assert config.model.name == "encoder_classifier" and config.model.pooling == name
      assert config.data.name == "mqar_classification"
      assert data_lib.num_classes(config.data) <= config.model.num_classes
    else:
      assert config.model.attention.mechanism == name
    batch = next(iter(data_lib.make_dataset(
        dict(config.data.to_dict(), read_num_threads=0), "train", global_batch_size=2, seed=0)))
    # Shapes only (tracing, no compilation): test_mechanism_trains_mqar trains every entry.
    model = nnx.eval_shape(lambda: models.build_model(  # noqa: B023
        config.model, vocab_size=data_lib.vocab_size(config.data), rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)

    def apply(state, inputs, weights):
      m = nnx.merge(graphdef, state)  # noqa: B023
      return m(inputs, weights=weights) if entry.kind == "pooling" else m(inputs)  # noqa: B023

    out = jax.eval_shape(apply, state, batch["inputs"], batch["weights"])
    want = ((2, config.model.num_classes) if entry.kind == "pooling"
            else (2, config.data.seq_len, config.data.vocab_size))
    assert out.shape == want, (name, out.shape)


def _quoted_name_files(name):
  """Files under ``attnlab/`` (``**/*.py``) containing ``"name"`` or ``'name'``, with the
  ``file:line`` of every occurrence."""
  pattern = re.compile(r"""(["'])%s\1""" % re.escape(name))
  files, where = set(), []
  for path in sorted(pathlib.Path(ROOT, "attnlab").rglob("*.py")):
    for i, line in enumerate(path.read_text().splitlines(), 1):
      if pattern.search(line):
        rel = path.relative_to(ROOT).as_posix()
        files.add(rel)
        where.append(f"{rel}:{i}")
  return files, where


# softmax and sigmoid are exempt from this count only: "softmax" and "sigmoid" are also the
# names of the normalisers of the chunked path (attnlab/core/chunked.py, normalizer=) and of the
# fused kernels (attnlab/kernels), and "softmax" is the default mechanism of the attention
# function, the NNX module and the model config, so these quoted strings are not
# mechanism-name references that a central list would have to keep in sync.
EXEMPT = ("softmax", "sigmoid")


def test_mechanism_names_in_at_most_two_files():
  """One mechanism, one place: every registered mechanism's quoted name appears in at most two
  files of the package, its core file (pure function + registration) and its NNX module."""
  offenders = {}
  for name in _all_names():
    if name in EXEMPT:
      continue
    files, where = _quoted_name_files(name)
    if len(files) > 2:
      offenders[name] = where
  assert not offenders, offenders
