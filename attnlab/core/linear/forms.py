"""The three forms of linear attention (see the package docstring for the recurrence).

Public entry: ``linear_attention(q, k, v, *, decay, beta, normalize, causal, form, ...)`` on
the library's layout (``[B, T, H, D]``). The private functions work on ``[B, H, T, D]``
float32 arrays with ``g [B, H, T, Dk|1]`` the per-step log-decay (``None``: no decay) and
``beta [B, H, T]`` (``None``: no delta rule), and return ``(out, final_state)``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

FORMS = ("parallel", "chunked", "recurrent")


# ------------------------------------------------------------------------------------------
# Shared pieces.


def _tril(t: int, strict: bool = False) -> Array:
  return jnp.tril(jnp.ones((t, t), jnp.bool_), -1 if strict else 0)


def _decay_weights(lc: Array, allowed: Array) -> Array:
  """``w[..., i, j, c] = exp(L_ic - L_jc)`` where ``allowed[i, j]`` else 0.

  ``lc [..., T, Dk|1]`` cumulative log-decays (non-increasing, so allowed entries are <= 1).
  """
  diff = lc[..., :, None, :] - lc[..., None, :, :]
  return jnp.exp(jnp.where(allowed[..., None], diff, -jnp.inf))


def _scores(a: Array, b: Array, w: Array | None, allowed: Array) -> Array:
  """``s[..., i, j] = sum_c a_ic b_jc w_ijc`` (``w`` None: no decay), zero where not allowed."""
  if w is None:
    return jnp.where(allowed, jnp.einsum("...ic,...jc->...ij", a, b), 0.0)
  if w.shape[-1] == 1:
    return jnp.einsum("...ic,...jc->...ij", a, b) * w[..., 0]
  return jnp.einsum("...ic,...jc,...ijc->...ij", a, b, w)


def _unit_lower_inverse(n: Array) -> Array:
  """``(I + n)^-1`` for ``n [..., C, C]`` strictly lower triangular, by blocks: the inverse of
  ``[[A, 0], [M, B]]`` is ``[[A^-1, 0], [-B^-1 M A^-1, B^-1]]``, doubling the block size from
  1 (a unit diagonal) in ``ceil(log2 C)`` rounds of batched matmuls.

  Written out instead of ``lax.linalg.triangular_solve``: on CPU, jaxlib's batched LAPACK
  solve splits its batch over the intra-op thread pool and waits for the parts, and two such
  solves running concurrently can occupy every pool thread and wait on each other forever
  (seen: DeltaNet training hung on a 2-core machine, both pool threads in the solve).
  """
  c = n.shape[-1]
  size = 1 << max(c - 1, 0).bit_length()  # the next power of two
  lead = n.shape[:-2]
  n = jnp.pad(n, [(0, 0)] * len(lead) + [(0, size - c), (0, size - c)])
  mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
  inv = jnp.ones(lead + (size, 1, 1), n.dtype)  # `size` diagonal blocks of size 1
  s = 1
  while s < size:
    m = size // (2 * s)
    blocks = n.reshape(lead + (m, 2, s, m, 2, s))
    lower = jnp.diagonal(blocks[..., :, 1, :, :, 0, :], axis1=-4, axis2=-2)  # [..., s, s, m]
    lower = jnp.moveaxis(lower, -1, -3)                                      # [..., m, s, s]
    a, b = inv[..., 0::2, :, :], inv[..., 1::2, :, :]
    corner = -mm(b, mm(lower, a))
    top = jnp.concatenate([a, jnp.zeros_like(a)], axis=-1)
    inv = jnp.concatenate([top, jnp.concatenate([corner, b], axis=-1)], axis=-2)
    s *= 2
  return inv[..., 0, :c, :c]


def _unit_lower_solve(a_strict: Array, beta: Array, rhs: Array) -> Array:
  """``X`` with ``(I + diag(beta) A) X = diag(beta) rhs``, ``A`` strictly lower triangular."""
  n = jnp.tril(beta[..., :, None] * a_strict, -1)
  return jnp.matmul(_unit_lower_inverse(n), beta[..., :, None] * rhs,
                    precision=jax.lax.Precision.HIGHEST)


def _zero_state(q: Array, v: Array) -> Array:
  b, h, _, dk = q.shape
  return jnp.zeros((b, h, dk, v.shape[-1]), jnp.float32)


# ------------------------------------------------------------------------------------------
# Causal forms: (q, k, v, g, beta, s0) -> (out, final state).


def _parallel(q, k, v, g, beta, s0, chunk_size=None):
  """Quadratic reference."""
  del chunk_size
  t = q.shape[2]
  s0 = _zero_state(q, v) if s0 is None else s0
  causal, strict = _tril(t), _tril(t, strict=True)
  lc = None if g is None else jnp.cumsum(g, axis=2)
  w = None if lc is None else _decay_weights(lc, causal)
  qd = q if lc is None else q * jnp.exp(lc)           # q_t scaled by the decay since t = 0
  kd = k if lc is None else k * jnp.exp(lc)
  if beta is not None:  # pseudo-values u_t = beta_t (v_t - S_{t-1}'^T k_t)
    a = _scores(k, k, w, strict)
    v = _unit_lower_solve(a, beta, v - jnp.einsum("bhtc,bhcv->bhtv", kd, s0))
  out = _scores(q, k, w, causal) @ v + jnp.einsum("bhtc,bhcv->bhtv", qd, s0)
  if lc is None:
    final = s0 + jnp.einsum("bhtc,bhtv->bhcv", k, v)
  else:
    last = lc[:, :, -1:, :]
    final = (jnp.exp(last[:, :, 0, :])[..., None] * s0
             + jnp.einsum("bhtc,bhtv->bhcv", k * jnp.exp(last - lc), v))
  return out, final


def _chunked(q, k, v, g, beta, s0, chunk_size=64):
  """Chunkwise: intra-chunk quadratic, inter-chunk states (WY form for the delta rule)."""
  b, h, t, dk = q.shape
  dv = v.shape[-1]
  c = int(chunk_size)
  n = -(-t // c)
  pad = n * c - t
  s0 = _zero_state(q, v) if s0 is None else s0

  def chunks(x):
    if x is None:
      return None
    x = jnp.pad(x, ((0, 0), (0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 3))
    return x.reshape((b, h, n, c) + x.shape[3:])

  q, k, v, g, beta = map(chunks, (q, k, v, g, beta))
  causal, strict = _tril(c), _tril(c, strict=True)
  lc = None if g is None else jnp.cumsum(g, axis=3)                 # [B,H,N,C,Dk|1]
  w = None if lc is None else _decay_weights(lc, causal)
  qd = q if lc is None else q * jnp.exp(lc)
  if lc is None:
    k_end, chunk_decay = k, None                                     # k_j decayed to chunk end
  else:
    k_end = k * jnp.exp(lc[:, :, :, -1:, :] - lc)
    chunk_decay = jnp.exp(lc[:, :, :, -1, :])                        # [B,H,N,Dk|1]

  def advance(s, i, u):
    dec = s if chunk_decay is None else chunk_decay[:, :, i][..., None] * s
    return dec + jnp.einsum("bhjc,bhjv->bhcv", k_end[:, :, i], u)

  if beta is None:
    ds = jnp.einsum("bhnjc,bhnjv->nbhcv", k_end, v)
    if chunk_decay is None:
      def body(s, x):
        return s + x, s
      xs = ds
    else:
      def body(s, x):
        d, a = x
        return a[..., None] * s + d, s
      xs = (ds, jnp.moveaxis(chunk_decay, 2, 0))
    final, starts = jax.lax.scan(body, s0, xs)
    u = v
  else:
    kd = k if lc is None else k * jnp.exp(lc)
    a = _scores(k, k, w, strict)
    sol = _unit_lower_solve(a, beta, jnp.concatenate([v, kd], axis=-1))
    u0, wy = sol[..., :dv], sol[..., dv:]                             # U = u0 - wy @ S

    def body(s, i):
      u_i = u0[:, :, i] - jnp.einsum("bhjc,bhcv->bhjv", wy[:, :, i], s)
      return advance(s, i, u_i), (s, u_i)
    final, (starts, u) = jax.lax.scan(body, s0, jnp.arange(n))
    u = jnp.moveaxis(u, 0, 2)
  starts = jnp.moveaxis(starts, 0, 2)                                # [B,H,N,Dk,Dv]
  out = _scores(q, k, w, causal) @ u + jnp.einsum("bhnic,bhncv->bhniv", qd, starts)
  return out.reshape(b, h, n * c, dv)[:, :, :t], final


def _recurrent(q, k, v, g, beta, s0, chunk_size=None):
  """One state update per step."""
  del chunk_size
  s0 = _zero_state(q, v) if s0 is None else s0
  xs = [jnp.moveaxis(x, 2, 0) for x in (q, k, v)]
  xs.append(None if g is None else jnp.moveaxis(g, 2, 0))
  xs.append(None if beta is None else jnp.moveaxis(beta, 2, 0))

  def body(s, x):
    s, o = _step(s, *x)
    return s, o
  final, out = jax.lax.scan(body, s0, tuple(xs))
  return jnp.moveaxis(out, 0, 2), final


def _step(s, q, k, v, g, beta):
  """One update of ``s [B,H,Dk,Dv]`` by ``q, k [B,H,Dk]``, ``v [B,H,Dv]``, ``g [B,H,Dk|1]``,
  ``beta [B,H]``; returns ``(s', o = s'^T q)``."""
  if g is not None:
    s = jnp.exp(g)[..., None] * s
  if beta is not None:
    v = beta[..., None] * (v - jnp.einsum("bhc,bhcv->bhv", k, s))
  s = s + k[..., :, None] * v[..., None, :]
  return s, jnp.einsum("bhc,bhcv->bhv", q, s)


_FORM_FNS = {"parallel": _parallel, "chunked": _chunked, "recurrent": _recurrent}


def _bidirectional(fn, q, k, v, g, chunk_size):
  """Causal pass + reversed causal pass - diagonal."""
  fwd, _ = fn(q, k, v, g, None, None, chunk_size)
  flip = lambda x: x[:, :, ::-1]  # noqa: E731
  g_rev = None
  if g is not None:  # reversed step t' must decay by g at original position T - t'
    g_rev = jnp.concatenate([jnp.zeros_like(g[:, :, :1]), flip(g)[:, :, :-1]], axis=2)
  bwd, _ = fn(flip(q), flip(k), flip(v), g_rev, None, None, chunk_size)
  diag = jnp.sum(q * k, axis=-1, keepdims=True) * v
  return fwd + flip(bwd) - diag


# ------------------------------------------------------------------------------------------
# Public API.


def state_shape(batch: int, heads: int, key_dim: int, value_dim: int,
                normalize: bool = False) -> tuple[int, int, int, int]:
  """Shape of the recurrent state: ``[B, H, Dk, Dv (+1 with the normaliser)]``."""
  return (batch, heads, key_dim, value_dim + (1 if normalize else 0))


def _check(name: str, x: Any, shapes: list[tuple[int, ...]], what: str) -> Array:
  x = jnp.asarray(x)
  if x.shape not in shapes:
    raise ValueError(f"{name} must have shape {what}, got {x.shape}")
  return x


def linear_attention(q: Array, k: Array, v: Array, *, decay: Array | None = None,
                     beta: Array | None = None, normalize: bool = False, eps: float = 1e-6,
                     causal: bool = True, form: str = "chunked", chunk_size: int = 64,
                     initial_state: Array | None = None, return_state: bool = False) -> Any:
  """Linear attention on feature-mapped ``q, k [B, T, H, Dk]``, ``v [B, T, H, Dv]``.

  Args:
    decay: log-decay ``g <= 0``: ``[H]`` (constant per head, RetNet), ``[B, T, H]`` (scalar
      per head and step) or ``[B, T, H, Dk]`` (per key channel, GLA); None = no decay.
    beta: delta-rule strength ``[B, T, H]`` (DeltaNet); None = plain update.
    normalize: divide by ``q_t . z_t + eps`` (``z`` the key sum); not with the delta rule.
    causal: False = bidirectional (plain update, no state in or out).
    form: "parallel", "chunked" or "recurrent" (equal results).
    chunk_size: C of the chunked form (any T).
    initial_state: ``state_shape(B, H, Dk, Dv, normalize)`` (causal only).
    return_state: also return the final state (causal only).

  Returns:
    ``out [B, T, H, Dv]`` in q's dtype (float32 arithmetic), or ``(out, state)``.
  """
  if form not in FORMS:
    raise ValueError(f"form must be one of {list(FORMS)}, got {form!r}")
  if q.ndim != 4 or k.shape != q.shape or v.ndim != 4 or v.shape[:3] != q.shape[:3]:
    raise ValueError("q, k must have shape [B, T, H, Dk] and v [B, T, H, Dv] (same B, T, H; "
                     f"repeat kv heads for GQA), got {q.shape}, {k.shape}, {v.shape}")
  if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
  b, t, h, dk = q.shape
  dv = v.shape[-1]
  if beta is not None and normalize:
    raise ValueError("normalize=True is not defined with the delta rule (beta)")
  if not causal and (beta is not None or initial_state is not None or return_state):
    raise ValueError("causal=False supports neither the delta rule (beta) nor states "
                     "(initial_state / return_state)")
  f32 = lambda x: jnp.moveaxis(jnp.asarray(x, jnp.float32), 1, 2)  # noqa: E731
  qi, ki, vi = f32(q), f32(k), f32(v)
  g = None
  if decay is not None:
    decay = _check("decay", decay, [(h,), (b, t, h), (b, t, h, dk)],
                   f"[H]=({h},), [B, T, H]={(b, t, h)} or [B, T, H, Dk]={(b, t, h, dk)}")
    decay = decay.astype(jnp.float32)
    if decay.ndim == 1:
      g = jnp.broadcast_to(decay[None, :, None, None], (b, h, t, 1))
    elif decay.ndim == 3:
      g = f32(decay)[..., None]
    else:
      g = f32(decay)
  bi = None
  if beta is not None:
    bi = f32(_check("beta", beta, [(b, t, h)], f"[B, T, H]={(b, t, h)}"))
  if normalize:
    vi = jnp.concatenate([vi, jnp.ones(vi.shape[:-1] + (1,), jnp.float32)], axis=-1)
  s0 = None
  if initial_state is not None:
    want = state_shape(b, h, dk, dv, normalize)
    s0 = _check("initial_state", initial_state, [want], str(want)).astype(jnp.float32)
  fn = _FORM_FNS[form]
  if causal:
    out, final = fn(qi, ki, vi, g, bi, s0, chunk_size)
  else:
    out, final = _bidirectional(fn, qi, ki, vi, g, chunk_size), None
  if normalize:
    den = out[..., -1:] + eps
    out = out[..., :-1] / jnp.where(den == 0.0, 1.0, den)
  out = jnp.moveaxis(out, 2, 1).astype(q.dtype)
  return (out, final) if return_state else out


def step(state: Array, q: Array, k: Array, v: Array, *, decay: Array | None = None,
         beta: Array | None = None, normalize: bool = False, eps: float = 1e-6
         ) -> tuple[Array, Array]:
  """One recurrent step: ``q, k [B, H, Dk]``, ``v [B, H, Dv]``, ``decay [B, H] | [B, H, Dk]``,
  ``beta [B, H]``, ``state`` as ``state_shape``. Returns ``(out [B, H, Dv], new state)``."""
  f = lambda x: None if x is None else jnp.asarray(x, jnp.float32)  # noqa: E731
  v32 = f(v)
  if normalize:
    v32 = jnp.concatenate([v32, jnp.ones(v32.shape[:-1] + (1,), jnp.float32)], axis=-1)
  g = f(decay)
  if g is not None and g.ndim == 2:
    g = g[..., None]
  s, o = _step(f(state), f(q), f(k), v32, g, f(beta))
  if normalize:
    den = o[..., -1:] + eps
    o = o[..., :-1] / jnp.where(den == 0.0, 1.0, den)
  return o.astype(q.dtype), s
