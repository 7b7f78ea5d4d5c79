"""Seed methods on a hand-built model whose heads' roles are known by construction
(tests/analysis/constructed.py): the expected answers come from the construction, closed
forms, or independent code paths (model(head_masks=...), nn.variants.attention_layer_importance).
"""

import math

import numpy as np
import pytest
from flax import nnx

from attnlab import analysis
from attnlab.analysis import methods
from attnlab.analysis.methods import _common
from attnlab.nn.variants import attention_layer_importance

import constructed as C  # noqa: I100  (tests/analysis helper)

_M = {}


def model(implementation="xla"):
  if implementation not in _M:
    _M[implementation] = C.build(implementation)
  return _M[implementation]


REP = C.repeated(batch=4, half=8)  # [4, 17]
HALF = 8
SECOND = np.zeros((4, 17), bool)
SECOND[:, HALF + 1:2 * HALF] = True  # queries 9..15 predict tokens 10..16 by induction


@nnx.jit
def fwd_masked(m, tokens, head_masks):
  return m(tokens, head_masks=head_masks)


def loss_on_second_half(tokens):
  mask = SECOND[:, :-1].astype(np.float32)

  def metric(logits):
    return float((np.asarray(_common.token_losses(logits, tokens)) * mask).sum() / mask.sum())
  return metric


def test_induction_and_successor_scores():
  s = methods.induction_scores(model(), REP)
  assert s[C.INDUCTION_HEAD] > 0.95
  others = np.delete(s.ravel(), C.INDUCTION_HEAD[0] * C.H + C.INDUCTION_HEAD[1])
  assert others.max() < 0.3
  succ = methods.successor_scores(model(), list(range(1, 10)))
  assert succ[C.SUCCESSOR_HEAD] == 1.0
  assert succ[C.INDUCTION_HEAD] == 0.0  # its OV copies a -> a
  assert (np.delete(succ.ravel(), 5) == 0).all()


def test_retrieval_scores():
  s = methods.retrieval_scores(model(), REP, SECOND)
  assert s[C.INDUCTION_HEAD] == 1.0
  assert np.delete(s.ravel(), 4).max() == 0.0
  s_lab = methods.retrieval_scores(model(), REP, SECOND, use_labels=True)
  assert s_lab[C.INDUCTION_HEAD] == 1.0


def test_sinks_and_act_closed_form():
  sc = methods.sink_scores(model(), REP)
  assert methods.sink_heads(sc, threshold=0.5) == [C.SINK_HEAD]
  assert sc["is_sink"][C.SINK_HEAD][0] and not sc["is_sink"][C.SINK_HEAD][1:].any()
  # ACT on a uniform head (L0H2, zero q/k): weight of key 0 becomes beta / (beta + i).
  beta, t = 0.4, REP.shape[1]
  edits = methods.act_edits(model(), [(0, 2)], [0], seq_len=t, beta=beta)
  _, cache = analysis.run_with_cache(model(), REP, names=["pattern.0"], edits=edits)
  i = np.arange(t)
  np.testing.assert_allclose(cache["pattern.0"][0, 2, :, 0], beta / (beta + i), atol=1e-6)
  np.testing.assert_allclose(cache["pattern.0"][0, 3, :, 0], 1 / (1 + i), atol=1e-6)


def harmful_model():
  """The constructed model plus a harmful uniform head L1H2 writing the BOS logit from every
  non-BOS token (BOS's own value is zero): moving its attention to BOS removes the harm."""
  m = C.build()
  att = m.stack.blocks[1].attention
  v, o = np.asarray(att.v.kernel[...]).copy(), np.asarray(att.o.kernel[...]).copy()
  v[C.TOK + 1:C.TOK + C.V, 2, 0] = 1.0
  o[2, 0, C.OUT + 0] = 6.0 / math.sqrt(C.E / 3)
  att.v.kernel[...], att.o.kernel[...] = v, o
  return m


def test_zerotuning_finds_the_sink_fix():
  m = harmful_model()
  mask = SECOND[:, :-1]
  out = methods.zerotuning_search(m, REP, target_mask=mask, heads=[(1, 2), (1, 3)],
                                  grid=(0.5, 1.0, 4.0, 16.0))
  assert out["gammas"][1, 2] == 16.0  # the largest gamma removes most of the harm
  assert out["gammas"][1, 3] == 1.0  # a head with no output: nothing to gain
  assert out["tuned"] < out["base"] - 0.1
  unsup = methods.zerotuning_search(m, REP, target_mask=mask, heads=[(1, 2)], kind="entropy",
                                    grid=(0.5, 16.0))
  assert unsup["gammas"][1, 2] == 16.0


def test_head_hunter_and_softpag():
  pos = list(range(HALF + 1, 2 * HALF))
  res = methods.head_hunter(model(), REP, methods.kl_objective(pos), k=2,
                            candidates=[(1, 0), (1, 1), (1, 2), (1, 3)])
  assert res["selected"][0] == C.INDUCTION_HEAD
  assert res["first_round"][1, 2] < 1e-6  # zero head: perturbing it changes nothing
  clean = analysis.run(model(), REP)
  np.testing.assert_allclose(methods.guided_logits(model(), REP, [(1, 0)], scale=0.0), clean,
                             atol=1e-5)


def test_attention_influence_selects_in_context_examples():
  rand = C.random_tokens(batch=4, length=17, seed=3)
  examples = np.concatenate([rand[:2], REP, rand[2:]])  # repeated rows are 2..5
  out = methods.attention_influence(model(), examples, [C.INDUCTION_HEAD], batch_size=4)
  assert sorted(methods.select(out["score"], 4)) == [2, 3, 4, 5]
  zero = methods.attention_influence(model(), examples, [C.INDUCTION_HEAD], mode="zero",
                                     batch_size=8)
  assert sorted(methods.select(zero["score"], 4)) == [2, 3, 4, 5]


def test_ablation_sweep_matches_head_masks():
  metric = loss_on_second_half(REP)
  res = methods.ablation_sweep(model(), REP, metric)
  for head in (C.INDUCTION_HEAD, C.PREV_HEAD):
    assert res["delta"][head] > 1.0
  for head in ((0, 2), (0, 3), (1, 2), (1, 3), C.SINK_HEAD):
    assert abs(res["delta"][head]) < 1e-5
  masks = np.ones((2, 4), np.float32)
  masks[C.INDUCTION_HEAD] = 0.0
  ref = metric(fwd_masked(model(), REP, masks))  # the model's own head-mask path
  assert abs(res["ablated"][C.INDUCTION_HEAD] - ref) < 1e-4
  uni = methods.ablation_sweep(model(), REP, metric, mode="uniform")
  assert uni["delta"][C.INDUCTION_HEAD] > 1.0
  mean = methods.ablation_sweep(model(), REP, metric, mode="mean")
  assert mean["delta"][C.INDUCTION_HEAD] > 1.0


def test_layer_redundancy():
  red = methods.layer_redundancy(model(), REP)
  np.testing.assert_allclose(red["mlp"], 0.0, atol=1e-6)  # the MLPs are zero
  ref = np.asarray(nnx.jit(lambda m, t: attention_layer_importance(m, t))(model(), REP))
  np.testing.assert_allclose(red["attention"], ref, atol=1e-5)
  assert (red["attention"] > 0.1).all()


def test_answer_emergence():
  answers = REP[:, HALF + 2]  # predicted at query HALF + 1 by induction
  out = methods.answer_emergence(model(), REP[:, :HALF + 2], answers)
  # The LM head reads only the output slot, written by layer 1: the embeddings and layer 0
  # decode to a uniform distribution.
  np.testing.assert_allclose(out["logprob"][:2], -math.log(C.V), atol=1e-5)
  assert (out["first_top1"] == 2).all()


def test_probes_decode_a_linear_concept():
  rng = np.random.default_rng(0)
  toks = np.concatenate([np.zeros((64, 1), np.int32),
                         rng.integers(1, C.V, (64, 6)).astype(np.int32)], axis=1)
  labels = (toks[:, -1] < 8).astype(np.int32)  # linear in the last token's one-hot
  out = methods.probe_layers(model(), toks, labels, steps=200)
  assert out["test_acc"][0] >= 0.9
  shuffled = rng.permutation(2 * np.arange(64) % 2 + (rng.random(64) < 0.5))
  out = methods.probe_layers(model(), toks, (shuffled % 2).astype(np.int32), steps=200)
  assert out["test_acc"].max() < 0.8  # random labels: near chance on held-out rows


# chunked is also covered by test_analysis_forward (the pass and edits through it): slow here.
@pytest.mark.parametrize("implementation", [pytest.param("chunked", marks=pytest.mark.slow),
                                            "pallas"])
def test_methods_unchanged_with_fused_attention(implementation):
  m = model(implementation)
  np.testing.assert_allclose(methods.induction_scores(m, REP),
                             methods.induction_scores(model(), REP), atol=1e-5)
  np.testing.assert_array_equal(methods.retrieval_scores(m, REP, SECOND),
                                methods.retrieval_scores(model(), REP, SECOND))
  metric = loss_on_second_half(REP)
  np.testing.assert_allclose(methods.ablation_sweep(m, REP, metric)["delta"],
                             methods.ablation_sweep(model(), REP, metric)["delta"], atol=1e-4)
