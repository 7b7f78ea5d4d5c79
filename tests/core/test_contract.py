"""The attention contract, run for every registered (mechanism, implementation) pair.

One test class per pair is generated below from ``attnlab.core.registry`` at collection time
(``ContractTest_<mechanism>__<implementation>``), each a subclass of
``contract.AttentionContractBase`` (see that module for what is checked against what). A
newly registered mechanism or implementation is covered with no edit to this file.

Run: ``python -m pytest tests/core/test_contract.py -q -p no:xdist``.
"""

import functools

import pytest

import attnlab
import contract  # tests/core/contract.py (the test directory is on sys.path under pytest)
from attnlab.core import registry

PAIRS = contract.discover_pairs()

# Known failures: {(mechanism, implementation, test method name): reason}. A case listed here
# is marked xfail(strict=True), so it fails loudly once fixed (then delete the entry).
KNOWN_FAILURES: dict[tuple[str, str, str], str] = {
}

# Identities of the math (GQA, batch permutation) run on the reference in the default run;
# other implementations are tied to the reference by test_vs_xla (whose inputs are GQA
# with a per-batch mask), so their own runs of these are marked slow (a compile each). The
# pmap variant of test_transforms is too: pmap of xla / chunked / pallas is covered by
# tests/core/test_sharding.py, and jit vs no-jit already ties each pair's traced values.
SLOW_FOR_NON_REFERENCE = ("test_gqa_equals_mha_with_repeated_kv", "test_batch_permutation",
                          "test_transforms__with_pmap")


def _wrap(method, mark):
  @functools.wraps(method)
  def wrapper(self):
    return method(self)
  return mark(wrapper)


def _make_pair_class(mechanism: str, implementation: str) -> type:
  name = f"ContractTest_{mechanism}__{implementation}"
  attrs = {"MECHANISM": mechanism, "IMPLEMENTATION": implementation, "__module__": __name__,
           "__qualname__": name}
  base = contract.AttentionContractBase
  if implementation != contract.REFERENCE:
    for method in SLOW_FOR_NON_REFERENCE:
      attrs[method] = _wrap(getattr(base, method), pytest.mark.slow)
  for (mech, impl, method), reason in KNOWN_FAILURES.items():
    if (mech, impl) == (mechanism, implementation):
      attrs[method] = _wrap(attrs.get(method, getattr(base, method)),
                            pytest.mark.xfail(strict=True, reason=reason))
  return type(name, (base,), attrs)


for _mechanism, _implementation in PAIRS:
  _cls = _make_pair_class(_mechanism, _implementation)
  globals()[_cls.__name__] = _cls
del _cls


class TestRegistryContract:
  """Registry-level parts of the contract (not per pair)."""

  def test_discovery_finds_the_builtin_pairs(self):
    for pair in [(m, i) for m in ("softmax", "sigmoid") for i in ("xla", "chunked", "pallas")]:
      assert pair in PAIRS, f"{pair} not registered; registered: {PAIRS}"

  @pytest.mark.parametrize("mechanism", sorted({m for m, _ in PAIRS}))
  def test_every_implemented_mechanism_has_the_reference(self, mechanism):
    # Non-"xla" implementations are checked against "xla"; without it they go unchecked.
    assert contract.REFERENCE in registry.get_mechanism(mechanism).implementations

  @pytest.mark.parametrize("mechanism", contract.mechanisms_without_implementations() or
                           [pytest.param(None, marks=pytest.mark.skip(reason="none"))])
  def test_mechanisms_without_a_pure_function_refuse_cleanly(self, mechanism):
    # Block, mixer, pooling (and some module) mechanisms have no pure attention function:
    # attention() must say so with a ValueError naming the mechanism.
    q, k, v = contract.make_qkv(contract.Geometry())
    with pytest.raises(ValueError, match=rf"mechanism '{mechanism}'"):
      attnlab.attention(q, k, v, mechanism=mechanism)

  def test_unknown_mechanism_raises(self):
    q, k, v = contract.make_qkv(contract.Geometry())
    with pytest.raises(ValueError, match=r"unknown mechanism 'nonexistent'"):
      attnlab.attention(q, k, v, mechanism="nonexistent")



def test_chunked_refuses_the_normalizer_and_other_mechanisms_keywords():
  # The mechanism sets the chunked normaliser itself; passing it (or sigmoid's bias to
  # softmax) must be refused, not silently change the computation.
  q, k, v = contract.make_qkv(contract.Geometry())
  for mechanism, kwargs in (("softmax", {"normalizer": "sigmoid"}),
                            ("sigmoid", {"normalizer": "softmax"}),
                            ("softmax", {"sigmoid_bias": -5.0})):
    with pytest.raises(ValueError, match=r"'chunked'.*unexpected arguments"):
      attnlab.attention(q, k, v, mechanism=mechanism, implementation="chunked", **kwargs)
