"""EchoAtt: layers that reuse another layer's attention weights.

Paper: "EchoAtt: Attend, Copy, then Adjust for More Efficient Large Language Models"
(Rajabzadeh et al., arXiv 2409.14595). Inner layers of LLMs have very similar attention
matrices, so a *sharing* layer ``l`` reuses the attention matrix of an *anchor* layer ``a``
while keeping its own value and output projections::

    A_a = softmax(Q_a K_a^T / sqrt(d) + M)          (computed by the anchor layer)
    Attn_l(X) = concat_h(A_a[h] X W_V,l[h]) W_O,l    (no Q_l, K_l, no softmax in layer l)

``echo_attention`` is the ``A_a @ V_l`` product (grouped for GQA, like every core function);
the output projection is the module's. Departures: the paper shares the anchor's matrices
inside a knowledge-distillation set-up (a teacher initialises the student, whose sharing layers
drop their q/k projections); here sharing is a plain architecture choice trained from scratch
(``config.model.echo``), and gradients from sharing layers flow into the anchor's q/k. The
paper groups consecutive layers behind the first of the group; we take any
``(anchor, sharing_layer)`` pairs with ``anchor < sharing_layer``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from attnlab.core import common
from attnlab.core import registry

Array = jax.Array


def echo_attention(weights: Array, v: Array, *, head_mask: Array | None = None) -> Array:
  """``weights [B, H, Tq, Tk]`` (an anchor's attention) times the own ``v [B, Tk, K, Dv]``.

  Returns ``[B, Tq, H, Dv]`` in v's dtype; query head ``h`` reads value head
  ``h // (H // K)``. ``head_mask`` (``[H]`` or ``[B, H]``) scales each head's output.
  """
  if weights.ndim != 4 or v.ndim != 4:
    raise ValueError(f"weights must be [batch, heads, q_len, kv_len] and v [batch, kv_len, "
                     f"kv_heads, v_dim], got {weights.shape} and {v.shape}")
  b, h, _, tk = weights.shape
  if v.shape[0] != b or v.shape[1] != tk or v.shape[2] == 0 or h % v.shape[2]:
    raise ValueError(f"v {v.shape} does not match the weights {weights.shape}: need batch "
                     f"{b}, kv_len {tk} and heads ({h}) a multiple of v's heads")
  head_mask = common.check_head_vector(head_mask, "head_mask", b, h)
  out = common.weighted_values(weights.astype(jnp.float32), v)
  return common.apply_head_mask(out, head_mask).astype(v.dtype)


def echo_sources(anchors: Sequence[int], sharing_layers: Sequence[int],
                 num_layers: int) -> dict[int, int]:
  """``{sharing_layer: anchor}`` from ``config.model.echo`` (validated).

  ``anchors`` has one entry per sharing layer, or a single entry used by all of them. Every
  anchor precedes its sharing layers and is not itself a sharing layer.
  """
  anchors, sharing = tuple(anchors or ()), tuple(sharing_layers or ())
  if not sharing:
    if anchors:
      raise ValueError(f"echo.anchors={anchors} given without echo.sharing_layers")
    return {}
  for name, seq in (("anchors", anchors), ("sharing_layers", sharing)):
    for i in seq:
      if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers:
        raise ValueError(f"echo.{name} entries must be layer indices in [0, {num_layers}), "
                         f"got {seq}")
  if len(anchors) == 1:
    anchors = anchors * len(sharing)
  if len(anchors) != len(sharing):
    raise ValueError(f"echo.anchors needs one entry per sharing layer or a single entry: got "
                     f"anchors={anchors}, sharing_layers={sharing}")
  if len(set(sharing)) != len(sharing):
    raise ValueError(f"echo.sharing_layers has duplicates: {sharing}")
  out = {}
  for a, s in zip(anchors, sharing):
    if a >= s:
      raise ValueError(f"echo: anchor {a} must come before its sharing layer {s}")
    if a in sharing:
      raise ValueError(f"echo: layer {a} cannot be both an anchor and a sharing layer")
    out[s] = a
  return out


registry.register_mechanism(
    'echoatt', kind='block',
    paper='EchoAtt: Attend, Copy, then Adjust for More Efficient Large Language Models '
          '(arXiv 2409.14595)',
    description="sharing layers reuse an anchor layer's attention weights A_a and keep their own "
                'values and output projection: out_l = (A_a V_l) W_O,l',
    complexity='sharing layer: O(T^2 d) (weights @ V), no q/k projections or softmax')
