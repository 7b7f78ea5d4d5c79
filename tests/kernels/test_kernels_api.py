"""``attnlab.attention(..., implementation="pallas")``: registration, dispatch, refusals,
and the parts of the contract handled around the kernel (head masks, weights, q_offset)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from attnlab import masks
from attnlab.core import api, registry
import attnlab.kernels as kernels

from _kernel_helpers import assert_close, jit_fast, make_inputs


def test_registered_for_softmax_and_sigmoid():
  for mech in ("softmax", "sigmoid"):
    impl = registry.get_mechanism(mech).implementations["pallas"]
    assert impl.auto_platforms == ("gpu", "tpu")


def test_attention_pallas_matches_reference():
  q, k, v, _ = make_inputs(0, 2, 45, 45, 4, 2, 64)
  head_mask = jnp.array([1.0, 0.0, 0.5, 2.0])
  slopes = attnlab.alibi_slopes(4)
  kw = dict(is_causal=True, head_mask=head_mask, alibi_slopes=slopes, softcap=20.0)
  got, weights = jit_fast(lambda a, b, c: attnlab.attention(
      a, b, c, implementation="pallas", return_weights=True, **kw), q, k, v)
  want, want_w = attnlab.attention(q, k, v, implementation="xla", return_weights=True, **kw)
  assert_close(got, want, jnp.float32, "out")
  chex.assert_trees_all_close(np.asarray(weights), np.asarray(want_w), rtol=1e-6, atol=1e-6)
  assert np.all(np.asarray(got[:, :, 1]) == 0.0)  # head_mask 0


def test_attention_pallas_sigmoid_kwargs_and_traced_offset():
  q, k, v, _ = make_inputs(1, 1, 16, 48, 2, 1, 64)

  def run(q, k, v, off):
    return attnlab.attention(q, k, v, mechanism="sigmoid", implementation="pallas",
                             is_causal=True, q_offset=off, sigmoid_bias=-3.0)

  got = jit_fast(run, q, k, v, jnp.int32(32))  # traced offset: traced tile tables
  want = attnlab.attention(q, k, v, mechanism="sigmoid", implementation="xla", is_causal=True,
                           q_offset=32, sigmoid_bias=-3.0)
  assert_close(got, want, jnp.float32, "out")


@pytest.mark.parametrize("case, match", [
    (dict(d=20), "head_dim 20 is not supported .*multiples of 8 up to 256"),
    (dict(d=264), "head_dim 264"),
    (dict(dtype=jnp.float64), "dtype"),
    (dict(mask=masks.ArrayMask(np.ones((8, 8), bool))), "ArrayMask"),
    (dict(block_q=48), "power of two"),
    (dict(kernel_backend="cuda"), "kernel_backend"),
])
def test_unsupported_calls_raise_clear_errors(case, match):
  d = case.pop("d", 64)
  dtype = case.pop("dtype", jnp.float32)
  with jax.enable_x64(dtype == jnp.float64):
    q = jnp.zeros((1, 8, 2, d), dtype)
    with pytest.raises(ValueError, match=match):
      attnlab.attention(q, q, q, implementation="pallas", **case)


def test_auto_uses_pallas_on_accelerators_and_falls_back(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  q = jnp.zeros((1, 4096, 8, 64), jnp.bfloat16)
  call = dict(q=q, k=q, v=q, mask=masks.CausalMask(), bias=None, scale=None, softcap=None,
              alibi_slopes=None, q_offset=0, head_mask=None, return_weights=False)
  assert api.choose_implementation("softmax", "auto", **call) == "pallas"
  assert api.choose_implementation("sigmoid", "auto", **call) == "pallas"
  q32 = jnp.zeros((1, 4096, 8, 32), jnp.bfloat16)  # head_dim 32: padded to 64 by the kernel
  call32 = dict(call, q=q32, k=q32, v=q32)
  assert api.choose_implementation("softmax", "auto", **call32) == "pallas"
  q20 = jnp.zeros((1, 4096, 8, 20), jnp.bfloat16)  # not a multiple of 8 -> chunked
  call20 = dict(call, q=q20, k=q20, v=q20)
  assert api.choose_implementation("softmax", "auto", **call20) == "chunked"
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert api.choose_implementation("softmax", "auto", **call) != "pallas"


def test_supports_reports_reasons():
  q = jnp.zeros((1, 8, 2, 64))
  assert kernels.unsupported_reason(q=q, k=q, v=q) is None
  assert "sigmoid_bias" in kernels.unsupported_reason(q=q, k=q, v=q, sigmoid_bias=1.0)
  assert kernels.unsupported_reason(q=q, k=q, v=q, sigmoid_bias=1.0,
                                    normalizer="sigmoid") is None


def test_public_names_and_module_paths():
  """The package's public names (and module paths from before the flash/ split) resolve."""
  import importlib

  from attnlab.kernels import flash
  from attnlab.kernels.flash import api, autotune, masks as kernel_masks, support, tables
  for name in kernels.__all__:
    assert getattr(kernels, name) is not None
  assert kernels.flash_attention is api.flash_attention is flash.flash_attention
  assert kernels.unsupported_reason is support.unsupported_reason
  assert kernels.build_table is tables.build_table
  assert kernels.kmask is kernel_masks and kernels.autotune is autotune
  assert importlib.import_module("attnlab.kernels.kmask") is kernel_masks
  assert importlib.import_module("attnlab.kernels.autotune") is autotune
