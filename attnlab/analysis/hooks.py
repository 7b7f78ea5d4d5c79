"""Hook names and interventions (``Edit``) of ``run_with_cache``.

Per layer ``l`` (key ``"<name>.<l>"``; a bare ``"<name>"`` in ``names`` means every layer):

==============  =================  =========================================================
name            shape              what
==============  =================  =========================================================
resid_pre       [B, T, E]          residual stream entering the block
attn_in         [B, T, E]          ``norm1(resid_pre)``
q               [B, T, H, D]       queries after QK-norm and RoPE
k, v            [B, T, K, D]       keys (after QK-norm and RoPE) and values (K kv heads)
scores          -- (edit only)     additive attention-logit bias ``[B|1, H|1, T|1, T|1]``
pattern         [B, H, T, T]       attention weights, recomputed densely from q/k (float32)
z               [B, T, H, D]       per-head attention output before the o projection
v_mix           -- (edit only)     SoftPAG: ``z <- (1 - a) z + a v`` with ``a [H]``
head_out        [B, T, H, E]       each head's contribution to the residual (o bias excluded)
attn_out        [B, T, E]          attention sublayer output (``sum_h head_out + o.bias``)
resid_mid       [B, T, E]          ``resid_pre + attn_out``
mlp_in          [B, T, E]          ``norm2(resid_mid)``
mlp_out         [B, T, E]          MLP output
resid_post      [B, T, E]          ``resid_mid + mlp_out`` (the next layer's resid_pre)
==============  =================  =========================================================

Global: ``embed [B, T, E]`` (token + absolute position embeddings = ``resid_pre.0``),
``final [B, T, E]`` (``final_norm(resid_post.L-1)``). Logits are always returned.

An ``Edit`` changes one hook's value with traced arrays (so one compilation serves a sweep
over their values): ``x <- x * scale + add``, then ``x <- x * (1 - mix) + value * mix``. Each
field is None or an array broadcastable to the hook's shape; see the constructors below for
per-head shapes. Edits of one hook apply in list order.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array

LAYER_HOOKS = ("resid_pre", "attn_in", "q", "k", "v", "pattern", "z", "head_out", "attn_out",
               "resid_mid", "mlp_in", "mlp_out", "resid_post")
EDIT_ONLY = ("scores", "v_mix")
GLOBAL_HOOKS = ("embed", "final")
ATTENTION_HOOKS = ("attn_in", "q", "k", "v", "pattern", "z", "head_out", "attn_out", "scores",
                   "v_mix")


@struct.dataclass
class Edit:
  """An intervention on hook ``name`` (``"z.3"``): ``x * scale + add``, then mixed with
  ``value`` by ``mix`` (all traced, broadcastable to the hook's shape, or None)."""
  name: str = struct.field(pytree_node=False)
  scale: Any = None
  add: Any = None
  value: Any = None
  mix: Any = None

  def apply(self, x: Array) -> Array:
    dtype = x.dtype
    x = x.astype(jnp.float32)
    if self.scale is not None:
      x = x * self.scale
    if self.add is not None:
      x = x + self.add
    if self.value is not None:
      mix = 1.0 if self.mix is None else self.mix
      x = x * (1.0 - mix) + jnp.asarray(self.value, jnp.float32) * mix
    return x.astype(dtype)


def split_key(key: str) -> tuple[str, int | None]:
  """``"z.3"`` -> ``("z", 3)``; ``"embed"`` -> ``("embed", None)``."""
  if not isinstance(key, str):
    raise TypeError(f"hook names must be strings like 'z.3' or 'resid_post', got {key!r}")
  base, _, layer = key.partition(".")
  if base in GLOBAL_HOOKS and not layer:
    return base, None
  if base not in LAYER_HOOKS + EDIT_ONLY:
    raise ValueError(f"unknown hook {key!r}; valid names: {list(LAYER_HOOKS)} per layer "
                     f"('<name>.<layer>'), edit-only {list(EDIT_ONLY)}, global "
                     f"{list(GLOBAL_HOOKS)}")
  if not layer:
    return base, None
  try:
    return base, int(layer)
  except ValueError:
    raise ValueError(f"hook {key!r}: the layer after '.' must be an int") from None


def resolve_names(names: Iterable[str] | str | None, num_layers: int) -> tuple[str, ...]:
  """Expand bare layer names to every layer; check layers are in range. Sorted, unique."""
  if names is None:
    return ()
  if isinstance(names, str):
    names = (names,)
  out = set()
  for key in names:
    base, layer = split_key(key)
    if base in EDIT_ONLY:
      raise ValueError(f"{base!r} is an intervention point, not a cached activation")
    if base in GLOBAL_HOOKS:
      out.add(base)
    elif layer is None:
      out.update(f"{base}.{i}" for i in range(num_layers))
    else:
      if not 0 <= layer < num_layers:
        raise ValueError(f"hook {key!r}: layer must be in [0, {num_layers}), got {layer}")
      out.add(f"{base}.{layer}")
  return tuple(sorted(out))


def check_edits(edits: Sequence[Edit] | None, num_layers: int) -> tuple[Edit, ...]:
  if edits is None:
    return ()
  if isinstance(edits, Edit):
    edits = (edits,)
  for e in edits:
    if not isinstance(e, Edit):
      raise TypeError(f"edits must be attnlab.analysis.Edit values, got {type(e).__name__}")
    base, layer = split_key(e.name)
    if base == "pattern":
      raise ValueError("'pattern' is recomputed for reading only; edit 'scores' (logit bias) "
                       "or 'q'/'k' instead")
    if base not in GLOBAL_HOOKS and (layer is None or not 0 <= layer < num_layers):
      raise ValueError(f"edit {e.name!r} must name one layer in [0, {num_layers}) like "
                       f"'{base}.0'")
    fields = {f for f in ("scale", "add", "value", "mix") if getattr(e, f) is not None}
    if base == "scores" and fields != {"add"}:
      raise ValueError(f"edit {e.name!r}: scores take an additive logit bias only (add=), got "
                       f"{sorted(fields)}")
    if base == "v_mix" and fields != {"mix"}:
      raise ValueError(f"edit {e.name!r}: v_mix takes mix= only (the weight of v), got "
                       f"{sorted(fields)}")
    if base not in ("scores", "v_mix") and "mix" in fields and "value" not in fields:
      raise ValueError(f"edit {e.name!r}: mix= needs value= (the activation mixed in)")
    if not fields:
      raise ValueError(f"edit {e.name!r} changes nothing: give scale, add or value")
  return tuple(edits)


# ----------------------------------------------------------------------------------------------
# Constructors for per-head edits. ``heads``: the head weights/values as an array [H] (or
# [B, H]); index sets become one-hot vectors with ``head_vector``.


def head_vector(heads: int | Sequence[int], num_heads: int, value: float = 1.0,
                default: float = 0.0) -> Array:
  """``[num_heads]`` float32: ``value`` at ``heads``, ``default`` elsewhere."""
  idx = [heads] if isinstance(heads, int) else list(heads)
  for h in idx:
    if not 0 <= h < num_heads:
      raise ValueError(f"head index must be in [0, {num_heads}), got {h}")
  return jnp.full((num_heads,), default, jnp.float32).at[jnp.asarray(idx, jnp.int32)].set(value)


def _per_head(x: Any, ndim_after: int) -> Array:
  """``[H]`` -> ``[1, 1, H, 1...]``; ``[B, H]`` -> ``[B, 1, H, 1...]`` (z-like layout)."""
  x = jnp.asarray(x, jnp.float32)
  if x.ndim == 1:
    x = x[None]
  if x.ndim != 2:
    raise ValueError(f"per-head values must have shape [H] or [B, H], got {x.shape}")
  return x.reshape(x.shape[0], 1, x.shape[1], *(1,) * ndim_after)


def scale_heads(layer: int, scale: Any, hook: str = "z") -> Edit:
  """Multiply head outputs of ``layer`` by ``scale [H] | [B, H]`` (0 = zero ablation)."""
  return Edit(f"{hook}.{layer}", scale=_per_head(scale, 1))


def mean_ablate_heads(layer: int, weight: Any, mean_z: Any) -> Edit:
  """Replace heads' ``z`` by ``mean_z`` (``[H, D]`` or ``[T, H, D]``, e.g. the mean over a
  reference batch) where ``weight [H] | [B, H]`` is 1."""
  return Edit(f"z.{layer}", value=jnp.asarray(mean_z, jnp.float32), mix=_per_head(weight, 1))


def patch(name: str, value: Any, mix: Any = 1.0) -> Edit:
  """Activation patching: hook ``name`` takes ``value`` (e.g. from a corrupt run's cache)
  where ``mix`` is 1 (a mask broadcastable to the hook's shape, e.g. per position/head)."""
  return Edit(name, value=value, mix=mix)


def head_logit_bias(layer: int, bias: Any, key_positions: Sequence[int] | None = None,
                    seq_len: int | None = None) -> Edit:
  """Per-head additive attention-logit bias ``bias [H]`` on the keys ``key_positions`` (all
  keys when None; then ``seq_len`` is not needed). ``[1, H, 1, S|1]``."""
  b = jnp.asarray(bias, jnp.float32).reshape(1, -1, 1, 1)
  if key_positions is not None:
    if seq_len is None:
      raise ValueError("head_logit_bias: key_positions needs seq_len")
    col = jnp.zeros((seq_len,), jnp.float32).at[jnp.asarray(key_positions)].set(1.0)
    b = b * col.reshape(1, 1, 1, seq_len)
  return Edit(f"scores.{layer}", add=b)


def value_mix(layer: int, alpha: Any) -> Edit:
  """SoftPAG: ``z_h <- (1 - alpha_h) z_h + alpha_h v_h`` with ``alpha [H] | [B, H]``."""
  return Edit(f"v_mix.{layer}", mix=_per_head(alpha, 1))
