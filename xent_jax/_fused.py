"""The fused softmax cross-entropy (seed Eq. 4.2.35–4.2.40) as ``jax.custom_vjp``.

Both kernels work on the last axis of ``logits`` (callers move the class axes
there). The forward computes, per row, a shift M and log s = log Σ exp(z - M),
and the loss from them, never forming log p̂ = z - logsumexp(z) at the scale
of z (so large logits lose no precision to cancellation). M is the row max
(Eq. 4.2.35); the integer-label kernel first tries the label's logit, which
needs one pass over the logits instead of two (see ``_label_shifted``). The
residuals are the logits as given (no copy, no upcast), the labels, the mask
and a few numbers per row: no N×C softmax is stored. The backward recomputes
p̂ = exp((z - M) - log s) (kept apart rather than as z - logsumexp(z), which
would lose the low bits of log s next to a large M) and returns p̂·Σp - p
(Eq. 4.2.29–4.2.31, 4.2.40), which is plain differentiable JAX so
``jax.hessian`` works. The per-row factors (Σp, the upstream gradient, NaN for
bad data) are folded in before the N×C expression, so each element costs one
exp and a few flops."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from xent_jax import _checks


class Classes(NamedTuple):
  """The class axis: the last axis of the local logits, split over the mesh
  axis ``axis_name`` inside ``shard_map`` (vocabulary parallelism) when given.
  Row reductions are local ones combined with ``psum``/``pmax``."""

  axis_name: str | None = None

  def sum(self, x: jax.Array) -> jax.Array:
    total = jnp.sum(x, axis=-1, keepdims=True)
    return total if self.axis_name is None else jax.lax.psum(total, self.axis_name)

  def max(self, x: jax.Array) -> jax.Array:
    top = jnp.max(x, axis=-1, keepdims=True)
    return top if self.axis_name is None else jax.lax.pmax(top, self.axis_name)

  def offset(self, local: int):
    """Global index of this shard's first class."""
    return 0 if self.axis_name is None else jax.lax.axis_index(self.axis_name) * local

  def size(self, local: int) -> int:
    return local if self.axis_name is None else local * jax.lax.axis_size(self.axis_name)


def _max_shifted(logits: jax.Array, dtype, mask: jax.Array | None, classes: Classes):
  """(log s, M) per row with M the masked row max (Eq. 4.2.35) and s = Σ exp(z - M)."""
  x = logits.astype(dtype)
  if mask is not None:
    x = jnp.where(mask, x, -jnp.inf)
  m = classes.max(x)
  m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
  return jnp.log(classes.sum(jnp.exp(x - m))), m


def _rows_kept(mask: jax.Array | None, classes: Classes) -> jax.Array | bool:
  if mask is None:
    return True
  if mask.shape[-1] == 1:  # a mask of the batch shape, the same on every shard
    return mask[..., 0]
  return classes.sum(mask.astype(jnp.int32))[..., 0] > 0


def _neg_log_softmax(logits: jax.Array, mask: jax.Array | None, m: jax.Array, log_s: jax.Array) -> jax.Array:
  """-log p̂ = log s - (z - M) recomputed from the logits; 0 on masked classes."""
  nll = log_s - (logits.astype(m.dtype) - m)
  return nll if mask is None else jnp.where(mask, nll, 0)


def _softmax(logits: jax.Array, mask: jax.Array | None, m: jax.Array, log_s: jax.Array) -> jax.Array:
  """p̂ = exp((z - M) - log s) recomputed from the logits; 0 on masked classes."""
  # The barrier keeps XLA from merging z - M here with the forward's z - M into
  # one N×C buffer (CSE), which the forward's reduction would then read back.
  m, log_s = jax.lax.optimization_barrier((m, log_s))
  p_hat = jnp.exp((logits.astype(m.dtype) - m) - log_s)
  return p_hat if mask is None else jnp.where(mask, p_hat, 0)


def _fused_loss(forward, backward):
  """A custom_vjp of (options, logits, *arrays) saving the inputs and forward's row statistics.

  ``options`` is static (hashable, ``nondiff_argnums``); the arrays are
  ordinary arguments whose cotangents the backward returns (``None`` for
  integer labels and masks).
  """

  @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
  def loss(options, logits: jax.Array, *arrays: jax.Array | None) -> jax.Array:
    return forward(options, logits, *arrays)[0]

  def fwd(options, logits, *arrays):
    value, stats = forward(options, logits, *arrays)
    return value, (logits, *arrays, stats)

  loss.defvjp(fwd, backward)
  return loss


class IntegerOptions(NamedTuple):
  """Static options of the integer-label kernel (see ``fused_integer_labels``)."""

  label_smoothing: float = 0.0
  z_loss: float = 0.0
  ignore_index: int | None = None
  classes: Classes = Classes()


# Integer labels (Eq. 4.2.37–4.2.38) with optional class weights w, label
# smoothing ε over the K allowed classes and a z-loss ζ (PaLM's log²Z):
#   L = (1-ε) w_c (lse - z_c) + (ε/K) Σ_allowed w_i (lse - z_i) + ζ lse²,
# which is the soft-label loss of q = (1-ε) w_c e_c + (ε/K) w·allowed plus ζ lse²,
# so ∂L/∂z = p̂ (Σq + 2ζ lse) - q (Eq. 4.2.40). ε, ζ and the ignore index are
# static; nothing N×C is stored.


def _label_terms(options, labels, weights, local_classes):
  """Per-row validity, ignore flags, the label's index in this shard (clipped),
  whether this shard holds it, and the label weight w_c."""
  classes = options.classes
  valid, ignored = _checks.label_validity(labels, classes.size(local_classes), options.ignore_index)
  local = labels - classes.offset(local_classes)
  here = (local >= 0) & (local < local_classes)
  index = jnp.clip(local, 0, local_classes - 1)
  w_c = None
  if weights is not None:
    w_c = classes.sum(jnp.where(here, weights[index], 0)[..., None])[..., 0]
  return valid, ignored, index, here, w_c


def _smoothing_weights(weights, mask, dtype, classes: Classes, local_classes: int, ndim: int):
  """w/K on the allowed classes (1/K without weights), 0 on masked ones; K = #allowed."""
  lead = (1,) * (ndim - 1)
  w = jnp.ones(lead + (1,), dtype) if weights is None else weights.astype(dtype).reshape(lead + weights.shape)
  if mask is None:
    return w / classes.size(local_classes)
  if mask.shape[-1] == 1:
    return jnp.where(mask, w, 0) / classes.size(local_classes)
  k = jnp.maximum(classes.sum(mask.astype(jnp.int32)), 1).astype(dtype)
  return jnp.where(mask, w, 0) / k


def _explicitly_sharded(x: jax.Array) -> bool:
  """Whether ``x`` carries an explicit-mode sharding (``AxisType.Explicit`` mesh axes)."""
  spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
  return spec is not None and any(axis is not None for axis in spec)


def _label_logit(x, index, here, classes):
  """z_c per row, (..., 1), from the unmasked logits (optax's reading of a masked label).

  A gather, except for explicitly sharded logits, where a gather's output
  sharding is ambiguous: there it is a one-hot sum, partial per shard.
  """
  if _explicitly_sharded(x):
    iota = jax.lax.broadcasted_iota(index.dtype, x.shape, x.ndim - 1)
    picked = jnp.sum(jnp.where(iota == index[..., None], x, 0), axis=-1, keepdims=True)
  else:
    picked = jnp.take_along_axis(x, index[..., None], axis=-1)
  return picked if classes.axis_name is None else classes.sum(jnp.where(here[..., None], picked, 0))


_MAX_LABEL_SHIFTED_SUM = 2.0**32


def _label_shifted(logits, dtype, mask, shift, matters, classes: Classes):
  """(log s, M) with M = the label's logit when that is safe for the batch, else the row max.

  Shifting by the label's logit z_c needs one pass over the logits (the max
  needs a second): s = Σ exp(z - z_c) ≥ 1 and the loss is log s. It is used
  when every row that counts has 1 ≤ s ≤ 2³² (no overflow, and log s < 22.2,
  so the exponent of p̂ = exp(y - log s) is rounded at most to ulp(22) ≈ 2e-6
  relative, as the max shift rounds log p̂ of a class with p̂ ≈ e⁻²²) and every
  other row has 0 < s < inf. Otherwise the whole batch takes the max shift
  (Eq. 4.2.35); under ``vmap`` both are computed. The logits enter in their
  own dtype and are converted inside each pass, so no upcast copy is stored.
  With a split class axis s is summed over the shards first, so every shard
  takes the same branch.
  """
  y = logits.astype(dtype) - shift
  if mask is not None:
    y = jnp.where(mask, y, -jnp.inf)
  s = classes.sum(jnp.exp(y))
  safe = jnp.where(matters[..., None], (s >= 1) & (s <= _MAX_LABEL_SHIFTED_SUM), (s > 0) & (s < jnp.inf))
  return jax.lax.cond(
      jnp.all(safe),
      lambda logits, mask: (jnp.log(s), shift),
      lambda logits, mask: _max_shifted(logits, dtype, mask, classes),
      logits,
      mask,
  )


def _int_forward(options, logits, labels, weights, mask):
  dtype = _checks.compute_dtype(logits.dtype)
  classes, local_classes = options.classes, logits.shape[-1]
  valid, ignored, index, here, w_c = _label_terms(options, labels, weights, local_classes)
  # As optax: the label's logit is read unmasked, so a label on a masked class
  # gives lse_masked(z) - z_c and the gradient p̂ - onehot, which agree.
  label_logit = _label_logit(logits, index, here, classes).astype(dtype)
  keep = _rows_kept(mask, classes) & ~ignored
  log_s, m = _label_shifted(logits, dtype, mask, label_logit, keep & valid, classes)
  loss = (log_s - (label_logit - m))[..., 0]
  if w_c is not None:
    loss = w_c.astype(dtype) * loss
  eps = options.label_smoothing
  if eps:
    w = _smoothing_weights(weights, mask, dtype, classes, local_classes, logits.ndim)
    smooth = classes.sum(jnp.where(w != 0, w * _neg_log_softmax(logits, mask, m, log_s), 0))[..., 0]
    loss = (1 - eps) * loss + eps * smooth
  if options.z_loss:
    loss = loss + options.z_loss * jnp.square(m + log_s)[..., 0]
  loss = _checks.nan_where(~valid, loss)
  return jnp.where(keep, loss, 0), (m, log_s)


def _int_bwd(options, res, ct):
  logits, labels, weights, mask, (m, log_s) = res
  p_hat = _softmax(logits, mask, m, log_s)
  dtype, classes, local_classes = p_hat.dtype, options.classes, p_hat.shape[-1]
  valid, ignored, index, here, w_c = _label_terms(options, labels, weights, local_classes)
  keep = _rows_kept(mask, classes) & ~ignored
  # Everything per row is folded into two row factors, so each element costs
  # one exp, a multiply and a compare: grad = p̂·(Σq + 2ζ lse)·u - q·u.
  scale = jnp.where(keep, _checks.nan_where(~valid, ct.astype(dtype)), 0)[..., None]
  eps = options.label_smoothing
  label_mass = (1 - eps) * (scale if w_c is None else w_c.astype(dtype)[..., None] * scale)
  total = label_mass
  spread = None
  if eps:
    spread = eps * _smoothing_weights(weights, mask, dtype, classes, local_classes, p_hat.ndim)
    total = total + classes.sum(jnp.broadcast_to(spread, p_hat.shape)) * scale
  if options.z_loss:
    total = total + 2 * options.z_loss * (m + log_s) * scale
  iota = jax.lax.broadcasted_iota(labels.dtype, p_hat.shape, p_hat.ndim - 1)
  onehot = (iota == index[..., None]) & here[..., None]
  grad = p_hat * total - jnp.where(onehot, label_mass, 0)
  if spread is not None:
    grad = grad - spread * scale
  grad_weights = None
  if weights is not None:
    # ∂L/∂w_i = (1-ε) 1{i=c} (lse - z_c) + (ε/K) allowed_i (lse - z_i), summed over rows.
    label_logit = _label_logit(logits, index, here, classes).astype(dtype)
    per_class = jnp.where(onehot, (1 - eps) * (log_s - (label_logit - m)), 0)
    if eps:
      uniform = _smoothing_weights(None, mask, dtype, classes, local_classes, p_hat.ndim)
      per_class = per_class + eps * uniform * _neg_log_softmax(logits, mask, m, log_s)
    grad_weights = jnp.sum((per_class * scale).reshape(-1, local_classes), axis=0).astype(weights.dtype)
  return grad.astype(logits.dtype), None, grad_weights, None


# Per-row loss over the last axis: fused_integer_labels(options, logits, labels, weights, mask);
# NaN for labels out of range that are not the ignore index, 0 for ignored rows.
fused_integer_labels = _fused_loss(_int_forward, _int_bwd)


# Soft labels: L = Σp·logsumexp(z) - Σ p·z (Eq. 4.2.23 with 4.2.37).


def _safe_loss(x, m, log_s, p):
  """Σ p·(log s - (z - M)) per row with 0·(-inf) = 0, over blocks of rows of at most 8 MiB each
  (in one piece for explicitly sharded arrays, which are already split)."""

  def row_sums(x, m, log_s, p):
    terms = jnp.where(p != 0, p * (log_s - (x - m)), 0)
    return jnp.sum(_checks.nan_where(p < 0, terms), axis=-1)

  if _explicitly_sharded(x):
    return row_sums(x, m, log_s, p)
  shape, width = x.shape, x.shape[-1]
  x, m, log_s, p = x.reshape(-1, width), m.reshape(-1, 1), log_s.reshape(-1, 1), p.reshape(-1, width)
  rows = x.shape[0]
  block = max(1, min(rows, 2**21 // width))
  out = jnp.zeros_like(x[:, 0])

  def step(start, out, size):
    value = row_sums(*(jax.lax.dynamic_slice_in_dim(a, start, size) for a in (x, m, log_s, p)))
    return jax.lax.dynamic_update_slice_in_dim(out, value, start, axis=0)

  full, rest = divmod(rows, block)
  out = jax.lax.fori_loop(0, full, lambda i, out: step(i * block, out, block), out)
  if rest:
    out = step(full * block, out, rest)
  return out.reshape(shape[:-1])


class SoftOptions(NamedTuple):
  """Static options of the soft-label kernel."""

  classes: Classes = Classes()


def _soft_forward(options, logits, labels, mask):
  classes = options.classes
  dtype = _checks.compute_dtype(logits.dtype, labels.dtype)
  log_s, m = _max_shifted(logits, dtype, mask, classes)
  # L = Σ p·(log s - y), y = z - M, non-negative terms, summed without a
  # select (XLA:CPU would store a select's N×C result). The 0·√p term is 0
  # for p ≥ 0 and NaN for a negative target, which makes that row NaN with
  # no pass of its own. The sum is NaN also where a -inf logit meets p = 0;
  # then the batch is summed again with 0·(-inf) = 0, a block of rows at a
  # time. (The barrier keeps XLA from sharing one stored z - M with log s.)
  x = logits.astype(dtype)
  y = x - jax.lax.optimization_barrier(m)
  p = _targets(labels, mask, dtype)
  loss = classes.sum(p * (log_s - y) + 0 * jnp.sqrt(p))[..., 0]
  loss = jax.lax.cond(
      jnp.all(jnp.isfinite(loss)),
      lambda *_: loss,
      lambda *args: classes.sum(_safe_loss(*args)[..., None])[..., 0],
      x, m, log_s, p,
  )
  loss = jnp.where(_rows_kept(mask, classes), loss, 0)
  return loss, (m, log_s, jnp.isnan(loss)[..., None])


def _targets(labels, mask, dtype):
  """The soft labels in the compute dtype, 0 on masked classes."""
  p = labels.astype(dtype)
  return p if mask is None else jnp.where(mask, p, 0)


def _like_logits(labels: jax.Array, logits: jax.Array) -> jax.Array:
  """Soft labels laid out as the logits when those are explicitly sharded (else as given),
  so that the elementwise gradient needs no gather of either."""
  if not _explicitly_sharded(logits):
    return labels
  return jax.sharding.reshard(labels, jax.typeof(logits).sharding)


def _soft_bwd(options, res, ct):
  logits, labels, mask, (m, log_s, bad) = res
  p_hat = _softmax(logits, mask, m, log_s)
  p = _targets(_like_logits(labels, logits), mask, m.dtype)
  kept = jnp.expand_dims(_rows_kept(mask, options.classes), -1)
  scale = jnp.where(kept, _checks.nan_where(bad, ct[..., None]), 0)
  total = options.classes.sum(p)
  grad_logits = p_hat * (total * scale) - p * scale
  # ∂L/∂p = -log p̂ (computed only if used).
  grad_labels = _neg_log_softmax(logits, mask, m, log_s) * scale
  return grad_logits.astype(logits.dtype), grad_labels.astype(labels.dtype), None


# Per-row Σ p·(logsumexp(z) - z) over the last axis; NaN for negative targets.
fused_soft_labels = _fused_loss(_soft_forward, _soft_bwd)
