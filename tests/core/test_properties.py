"""Property-based tests (hypothesis): random shapes, GQA ratios, masks, offsets and dtypes.

For every drawn case, each implementation of softmax and sigmoid attention ("xla", "chunked")
either agrees with a naive numpy reference written here (float64 loops over the allowed keys)
or refuses the call with a ValueError that names the implementation.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnlab
from attnlab import masks


def naive(q, k, v, allowed, mechanism, sigmoid_bias, scale):
  """float64 reference: q [B,Tq,H,D], k/v [B,Tk,K,D], allowed bool [B,Tq,Tk]."""
  b, tq, h, d = q.shape
  tk, kh = k.shape[1], k.shape[2]
  out = np.zeros((b, tq, h, v.shape[-1]))
  for bi in range(b):
    for hi in range(h):
      g = hi // (h // kh)
      for i in range(tq):
        keys = np.nonzero(allowed[bi, i])[0]
        if keys.size == 0:
          continue  # a row with no visible key is zero
        s = np.array([q[bi, i, hi] @ k[bi, j, g] * scale for j in keys])
        if mechanism == "softmax":
          w = np.exp(s - s.max())
          w = w / w.sum()
        else:
          w = 1.0 / (1.0 + np.exp(-(s + sigmoid_bias)))
        out[bi, i, hi] = w @ v[bi, keys, g]
  return out


@st.composite
def cases(draw):
  b = draw(st.integers(1, 2))
  kh = draw(st.sampled_from([1, 2]))
  h = kh * draw(st.sampled_from([1, 2, 3]))
  d = draw(st.sampled_from([4, 8]))
  tk = draw(st.integers(1, 13))
  decode = draw(st.booleans())
  tq = draw(st.integers(1, tk)) if decode else tk
  q_offset = tk - tq if decode else 0
  kind = draw(st.sampled_from(["none", "causal", "window", "lengths", "segments", "array"]))
  seed = draw(st.integers(0, 2**16))
  dtype = draw(st.sampled_from(["float32", "bfloat16"]))
  mechanism = draw(st.sampled_from(["softmax", "sigmoid"]))
  block = draw(st.sampled_from([2, 3, 8]))
  return dict(b=b, kh=kh, h=h, d=d, tk=tk, tq=tq, q_offset=q_offset, kind=kind, seed=seed,
              dtype=dtype, mechanism=mechanism, block=block)


def build(c):
  rng = np.random.default_rng(c["seed"])
  q = rng.standard_normal((c["b"], c["tq"], c["h"], c["d"]))
  k = rng.standard_normal((c["b"], c["tk"], c["kh"], c["d"]))
  v = rng.standard_normal((c["b"], c["tk"], c["kh"], c["d"]))
  qp = np.arange(c["tq"]) + c["q_offset"]
  kp = np.arange(c["tk"])
  allowed = np.ones((c["b"], c["tq"], c["tk"]), bool)
  mask, is_causal = None, False
  if c["kind"] == "causal":
    is_causal = True
    allowed &= kp[None, None, :] <= qp[None, :, None]
  elif c["kind"] == "window":
    mask = masks.SlidingWindowMask(2, 0, c["q_offset"])
    rel = kp[None, None, :] - qp[None, :, None]
    allowed &= (rel <= 0) & (rel >= -2)
  elif c["kind"] == "lengths":
    lengths = rng.integers(0, c["tk"] + 1, size=c["b"])
    mask = masks.ValidLengthMask(kv_lengths=jnp.asarray(lengths, jnp.int32))
    allowed &= kp[None, None, :] < lengths[:, None, None]
  elif c["kind"] == "segments" and c["tq"] == c["tk"]:
    ids = np.sort(rng.integers(0, 3, size=(c["b"], c["tk"])), axis=1)
    mask = masks.SegmentMask(jnp.asarray(ids, jnp.int32))
    allowed &= ids[:, :, None] == ids[:, None, :]
  elif c["kind"] == "array":
    arr = rng.random((c["b"], c["tq"], c["tk"])) < 0.6
    mask = masks.ArrayMask(jnp.asarray(arr))
    allowed &= arr
  return q, k, v, allowed, mask, is_causal


@pytest.mark.parametrize("implementation", ["xla", "chunked"])
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(c=cases())
def test_implementation_agrees_with_naive_or_refuses(implementation, c):
  q, k, v, allowed, mask, is_causal = build(c)
  dtype = jnp.dtype(c["dtype"])
  scale = 1.0 / math.sqrt(c["d"])
  sigmoid_bias = -math.log(c["tk"])
  extra = {"sigmoid_bias": sigmoid_bias} if c["mechanism"] == "sigmoid" else {}
  if implementation == "chunked":
    extra.update(block_q=c["block"], block_k=c["block"])
  qj, kj, vj = (jnp.asarray(x, dtype) for x in (q, k, v))
  try:
    got = attnlab.attention(qj, kj, vj, mechanism=c["mechanism"], mask=mask,
                            is_causal=is_causal, q_offset=c["q_offset"],
                            implementation=implementation, **extra)
  except ValueError as e:
    assert implementation in str(e), e
    return
  assert got.shape == (c["b"], c["tq"], c["h"], c["d"]) and got.dtype == dtype
  # The reference sees the same (rounded) inputs.
  want = naive(*(np.asarray(x, np.float64) for x in (qj.astype(jnp.float32),
                                                       kj.astype(jnp.float32),
                                                       vj.astype(jnp.float32))),
               allowed, c["mechanism"], sigmoid_bias, scale)
  # float32: summation order only; bfloat16: the output is rounded to bf16 (2^-8 relative)
  # and the chunked path feeds bf16 probabilities to the second matmul.
  tol = 1e-4 if dtype == jnp.float32 else 3e-2
  err = np.max(np.abs(np.asarray(got, np.float64) - want)) / max(1.0, np.max(np.abs(want)))
  assert err <= tol, (err, c)
