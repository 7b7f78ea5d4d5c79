"""T5 relative-position-bucket attention module (arXiv 1910.10683), ending in
``attnlab.core.mechanisms.t5_relative.t5_relative_attention``.

Parameter: ``rel_bias [num_buckets, H]``, T5's relative attention bias (initialised as
Hugging Face's T5, normal with std ``d_model ** -0.5``). ``bidirectional`` defaults to
``not causal`` (T5's encoder: bidirectional, decoder: causal buckets). Departures: one table
per layer (T5 shares the first layer's); the logit scale is ``1/sqrt(head_dim)``; positions
are the token index (``q_offset + i``). Use ``model.position = "none"`` for T5's setting.
Shapes: x ``[B, T, E]`` -> ``[B, T, E]``.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from attnlab.nn.attention import register_attention_module
from attnlab.nn.mechanisms._scores_base import ScoresAttention, check_kwarg, make_param


@register_attention_module("t5_relative")
class T5RelativeAttention(ScoresAttention):
  """T5 relative attention over ``x [B, T, E]``; see the module docstring.

  Args: ``num_buckets``, ``max_distance`` (T5's bucket parameters, defaults 32 and 128),
  ``bidirectional`` (None: ``not causal``); ``**kwargs``: ``MultiHeadAttention``'s arguments.
  """

  def __init__(self, d_model: int, num_heads: int, *, num_buckets: int = 32,
               max_distance: int = 128, bidirectional: bool | None = None, rngs: nnx.Rngs,
               **kwargs: Any):
    super().__init__(d_model, num_heads, rngs=rngs, **kwargs)
    self.num_buckets = check_kwarg(num_buckets, "num_buckets", "int>0", "t5_relative")
    self.max_distance = check_kwarg(max_distance, "max_distance", "int>0", "t5_relative")
    if bidirectional is not None:
      check_kwarg(bidirectional, "bidirectional", "bool", "t5_relative")
    self.bidirectional = (not self.causal) if bidirectional is None else bidirectional
    if self.num_buckets < (4 if self.bidirectional else 2):
      raise ValueError(f"t5_relative: num_buckets must be >= {4 if self.bidirectional else 2}"
                       f", got {num_buckets}")
    init = nnx.initializers.normal(self.d_model ** -0.5)
    self.rel_bias = make_param(rngs, init, (self.num_buckets, self.num_heads),
                               (None, "heads"), self.param_dtype)

  def attend(self, q, k, v, *, mask, bias, q_offset, head_mask, return_weights):
    return self.call_core(q, k, v, mask=mask, bias=bias, q_offset=q_offset,
                          head_mask=head_mask, return_weights=return_weights,
                          rel_bias=self.rel_bias[...], num_buckets=self.num_buckets,
                          max_distance=self.max_distance, bidirectional=self.bidirectional)
