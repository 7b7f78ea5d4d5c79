"""``run_with_cache``: an instrumented forward pass of a ``DecoderLM``.

The pass walks the model's own modules (embedder, each block's norms, attention projections,
``attend``, output projection, MLP, final norm, head) and exposes the hooks of
``attnlab.analysis.hooks``. Attention still runs through the module's ``attend`` with the
model's implementation (xla, chunked, pallas, ...): the fused kernels never have to expose
their weights. A ``pattern`` asked for is recomputed densely from q/k for that layer only
(``return_weights`` of the attention contract); interventions act on the kernel's inputs and
output (q/k/v, the logit ``bias``, z), so they work with every implementation.

The whole pass is one ``jax.jit`` per (model structure, hook names, edit structure, token
shape): edit values are traced, so a sweep over heads or scales reuses one compilation.

Supported blocks: ``MultiHeadAttention`` and subclasses that keep its ``__call__`` (they may
override ``project_qkv`` / ``attend``), dropped attention sublayers. EchoAtt sharing, FiRST
routers and modules with their own ``__call__`` (token mixers, ...) are refused.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Int

from attnlab.analysis import hooks as hooks_lib
from attnlab.analysis.hooks import Edit
from attnlab.core import masks
from attnlab.models.common import check_tokens
from attnlab.nn import positions as positions_lib
from attnlab.nn.attention import MultiHeadAttention

Array = jax.Array


class Cache(dict):
  """``{"z.3": array, ...}`` plus ``stack(name)`` -> ``[L, ...]`` over the layers cached."""

  def stack(self, name: str) -> Array:
    keys = sorted((k for k in self if k.partition(".")[0] == name),
                  key=lambda k: int(k.partition(".")[2]))
    if not keys:
      raise KeyError(f"no {name!r} activations in the cache (ask for names=[{name!r}])")
    return jnp.stack([self[k] for k in keys])

  def layers(self, name: str) -> list[int]:
    return sorted(int(k.partition(".")[2]) for k in self if k.partition(".")[0] == name)


def check_model(model: Any) -> None:
  """Raise ValueError when the instrumented pass cannot mirror ``model`` exactly."""
  stack = getattr(model, "stack", None)
  if stack is None or not hasattr(model, "embedder") or not hasattr(model, "final_norm"):
    raise ValueError(f"run_with_cache needs an attnlab DecoderLM, got {type(model).__name__}")
  if stack.echo_sources:
    raise ValueError("run_with_cache does not support EchoAtt sharing layers (config echo)")
  for i, block in enumerate(stack.blocks):
    if block.router is not None:
      raise ValueError(f"run_with_cache does not support FiRST routers (layer {i})")
    attn = block.attention
    if attn is None:
      continue
    if not isinstance(attn, MultiHeadAttention) or type(attn).__call__ is not (
        MultiHeadAttention.__call__):
      raise ValueError(f"layer {i}: {type(attn).__name__} has its own __call__; run_with_cache "
                       "supports MultiHeadAttention and subclasses overriding only "
                       "project_qkv/attend")


def _norm(norm: nnx.Module, x: Array) -> Array:
  if getattr(norm, "takes_deterministic", False):
    return norm(x, deterministic=True)
  return norm(x)


class _Run:
  """State of one instrumented pass: which hooks to keep, which edits to apply."""

  def __init__(self, names: Sequence[str], edits: Sequence[Edit]):
    self.names = set(names)
    self.edits: dict[str, list[Edit]] = {}
    for e in edits:
      self.edits.setdefault(e.name, []).append(e)
    self.cache = Cache()

  def hook(self, key: str, x: Array) -> Array:
    for e in self.edits.get(key, ()):
      x = e.apply(x)
    if key in self.names:
      self.cache[key] = x
    return x

  def wants(self, key: str) -> bool:
    return key in self.names or key in self.edits


def _attention(run: _Run, attn: MultiHeadAttention, x: Array, positions: Array,
               mask: masks.Mask | None, i: int) -> Array:
  b, t, _ = x.shape
  q, k, v = attn.project_qkv(x)
  q, k = attn.normalize_qk(q, k)
  if attn.position == "rope":
    scaling = getattr(attn, "rope_scaling", None)
    q = positions_lib.apply_rope(q, positions, base=attn.rope_base, scaling=scaling)
    k = positions_lib.apply_rope(k, positions, base=attn.rope_base, scaling=scaling)
  q, k, v = run.hook(f"q.{i}", q), run.hook(f"k.{i}", k), run.hook(f"v.{i}", v)
  bias = None
  for e in run.edits.get(f"scores.{i}", ()):
    if e.add is None or e.scale is not None or e.value is not None:
      raise ValueError(f"edit {e.name!r}: scores take an additive bias only (add=)")
    bias = e.add if bias is None else bias + e.add
  full_mask = masks.combine(attn.structural_mask(t, t, 0, False), mask)
  want_pattern = f"pattern.{i}" in run.names
  out = attn.attend(q, k, v, mask=full_mask, bias=bias, q_offset=0, head_mask=None,
                    return_weights=want_pattern)
  if want_pattern:
    z, weights = out
    run.cache[f"pattern.{i}"] = weights.astype(jnp.float32)
  else:
    z = out
  for e in run.edits.get(f"v_mix.{i}", ()):
    group = attn.num_heads // v.shape[2]
    v_heads = jnp.repeat(v, group, axis=2).astype(jnp.float32)
    z = (z.astype(jnp.float32) * (1.0 - e.mix) + v_heads * e.mix).astype(z.dtype)
  z = run.hook(f"z.{i}", z)
  z = z.astype(attn.dtype)
  if run.wants(f"head_out.{i}"):
    kernel = attn.o.kernel[...].astype(attn.dtype)
    per_head = jnp.einsum("bthd,hde->bthe", z, kernel)
    per_head = run.hook(f"head_out.{i}", per_head)
    out = per_head.sum(axis=2)
    if attn.o.bias is not None:
      out = out + attn.o.bias[...].astype(out.dtype)
  else:
    out = attn.o(z)
  return out


def _forward(model: Any, tokens: Array, run: _Run) -> Array:
  b, t = tokens.shape
  positions = positions_lib.default_positions(b, t)
  x = model.embedder(tokens, positions)
  x = run.hook("embed", x)
  for i, block in enumerate(model.stack.blocks):
    x = run.hook(f"resid_pre.{i}", x)
    if block.attention is not None:
      h = run.hook(f"attn_in.{i}", _norm(block.norm1, x))
      a = _attention(run, block.attention, h, positions, None, i)
      a = run.hook(f"attn_out.{i}", a)
      x = x + a.astype(x.dtype)
    x = run.hook(f"resid_mid.{i}", x)
    h = run.hook(f"mlp_in.{i}", _norm(block.norm2, x))
    m = run.hook(f"mlp_out.{i}", block.mlp(h))
    x = x + m.astype(x.dtype)
    x = run.hook(f"resid_post.{i}", x)
  x = run.hook("final", model.final_norm(x))
  logits = model.embedder.tokens.attend(x) if model.tie_embeddings else model.head(x)
  return logits.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("graphdef", "names"))
def _run_jit(state: Any, tokens: Array, edits: tuple[Edit, ...], *, graphdef: Any,
             names: tuple[str, ...]) -> tuple[Array, dict[str, Array]]:
  model = nnx.merge(graphdef, state)
  run = _Run(names, edits)
  logits = _forward(model, tokens, run)
  return logits, dict(run.cache)


def run_with_cache(model: Any, tokens: Int[Array, "B T"], *,
                   names: Iterable[str] | str | None = None,
                   edits: Sequence[Edit] | Edit | None = None) -> tuple[Array, Cache]:
  """Logits ``[B, T, vocab]`` float32 and a ``Cache`` of the hooks in ``names``.

  Args:
    model: an attnlab ``DecoderLM`` (any attention implementation).
    tokens: int ``[B, T]`` (full sequences; no KV cache).
    names: hook keys (``"z.3"``) or bare names (``"pattern"`` = every layer); see
      ``attnlab.analysis.hooks``. Only these are kept.
    edits: interventions (``Edit``), applied in order; their arrays are traced.
  """
  check_model(model)
  tokens = check_tokens(tokens)
  if model.embedder.position == "learned" and tokens.shape[1] > model.max_len:
    raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_len {model.max_len}")
  n = model.num_layers
  names = hooks_lib.resolve_names(names, n)
  edits = hooks_lib.check_edits(edits, n)
  for name in names:
    base, layer = hooks_lib.split_key(name)
    if base in hooks_lib.ATTENTION_HOOKS and model.stack.blocks[layer].attention is None:
      raise ValueError(f"layer {layer} has no attention sublayer (dropped): no {name!r}")
  graphdef, state = nnx.split(model)
  logits, cache = _run_jit(state, tokens, edits, graphdef=graphdef, names=names)
  return logits, Cache(cache)


def run(model: Any, tokens: Int[Array, "B T"], *,
        edits: Sequence[Edit] | Edit | None = None) -> Array:
  """Logits only (``run_with_cache`` without a cache)."""
  return run_with_cache(model, tokens, edits=edits)[0]
