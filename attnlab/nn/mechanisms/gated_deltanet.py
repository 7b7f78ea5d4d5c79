"""``GatedDeltaNetAttention``: the gated delta rule (``attnlab.core.mechanisms.gated_deltanet``)
with Mamba-2's decay ``-exp(A) softplus(x W_a + dt_bias)``, ``beta = sigmoid(x W_beta)``, a
per-head RMSNorm and a swish output gate. Causal only."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attnlab.core.mechanisms.gated_deltanet import gated_delta_attention, gated_delta_log_decay
from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._linear_base import _IN_INIT
from attnlab.nn.mechanisms._mixer_base import lecun, make_param
from attnlab.nn.mechanisms.deltanet import DeltaNetAttention


@register_attention_module("gated_deltanet")
class GatedDeltaNetAttention(DeltaNetAttention):
  """Gated DeltaNet over ``x [B, T, E]``; ``**kwargs``: ``LinearAttention``'s arguments."""

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs, **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    h, d, pd = self.num_heads, self.head_dim, self.param_dtype
    self.wa = make_param(rngs, lecun, (d_model, h), ("embed", "heads"), pd)
    # As Mamba-2: A ~ U[1, 16] (stored as log), dt = softplus(dt_bias) ~ U[1e-3, 1e-1].
    rng = np.random.RandomState(0)
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), h))
    self.a_log = nnx.Param(jnp.asarray(np.log(rng.uniform(1.0, 16.0, h)), pd))
    self.dt_bias = nnx.Param(jnp.asarray(dt + np.log(-np.expm1(-dt)), pd))
    self.wg = make_param(rngs, _IN_INIT, (d_model, h, d), ("embed", "heads", "head_dim"), pd)

  def gates(self, x) -> dict[str, Any]:
    decay = gated_delta_log_decay(x @ self.kernel(self.wa), self.a_log[...], self.dt_bias[...])
    return {"beta": jax.nn.sigmoid(x @ self.kernel(self.wb)), "log_decay": decay}

  def run(self, q, k, v, gates, **kw):
    return gated_delta_attention(q, k, v, **gates, **kw)

  def finish(self, x, out):
    gate = jnp.einsum("bte,ehd->bthd", x, self.kernel(self.wg)).astype(jnp.float32)
    return jax.nn.silu(gate) * out
