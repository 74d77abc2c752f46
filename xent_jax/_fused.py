"""The fused softmax cross-entropy (seed Eq. 4.2.35–4.2.40) as ``jax.custom_vjp``.

Both kernels work on the last axis of ``logits`` (callers move the class axes
there). The forward computes, per row, the shifted logits y = z - M with
M = max z (Eq. 4.2.35) and log s = log Σ exp(y), and the loss as
Σ p_i (log s - y_i), which never forms log p̂ = z - logsumexp(z) at the scale of
z (so large logits lose no precision to cancellation). The residuals are the
logits as given (no copy, no upcast), the labels, the mask and, per row, M and
log s: no N×C softmax is stored. The backward recomputes p̂ = exp((z - M) - log s)
(kept apart rather than as z - logsumexp(z), which would lose the low bits of
log s next to a large M) and returns p̂·Σp - p (Eq. 4.2.29–4.2.31, 4.2.40),
which is plain differentiable JAX so ``jax.hessian`` works.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from xent_jax import _checks


def _shifted(x: jax.Array, mask: jax.Array | None):
  """Masked logits shifted by their row max, and log Σ exp of the shifted ones."""
  if mask is not None:
    x = jnp.where(mask, x, -jnp.inf)
  m = jnp.max(x, axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
  y = x - m
  log_s = jnp.log(jnp.sum(jnp.exp(y), axis=-1, keepdims=True))
  return y, log_s, m


def _rows_kept(mask: jax.Array | None) -> jax.Array | bool:
  return True if mask is None else jnp.any(mask, axis=-1)


def _neg_log_softmax(logits: jax.Array, mask: jax.Array | None, m: jax.Array, log_s: jax.Array) -> jax.Array:
  """-log p̂ = log s - (z - M) recomputed from the logits; 0 on masked classes."""
  nll = log_s - (logits.astype(m.dtype) - m)
  return nll if mask is None else jnp.where(mask, nll, 0)


def _softmax(logits: jax.Array, mask: jax.Array | None, m: jax.Array, log_s: jax.Array) -> jax.Array:
  """p̂ = exp((z - M) - log s) recomputed from the logits; 0 on masked classes."""
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


# Integer labels (Eq. 4.2.37–4.2.38) with optional class weights w, label
# smoothing ε over the K allowed classes and a z-loss ζ (PaLM's log²Z):
#   L = (1-ε) w_c (lse - z_c) + (ε/K) Σ_allowed w_i (lse - z_i) + ζ lse²,
# which is the soft-label loss of q = (1-ε) w_c e_c + (ε/K) w·allowed plus ζ lse²,
# so ∂L/∂z = p̂ (Σq + 2ζ lse) - q (Eq. 4.2.40). ε, ζ and the ignore index are
# static; nothing N×C is stored.


def _label_terms(options, labels, weights, num_classes):
  """Per-row validity, ignore flags, clipped index and label weight w_c."""
  in_range = (labels >= 0) & (labels < num_classes)
  ignored = jnp.zeros_like(in_range) if options.ignore_index is None else labels == options.ignore_index
  index = jnp.clip(labels, 0, num_classes - 1)
  w_c = None if weights is None else weights[index]
  return in_range | ignored, ignored, index, w_c


def _smoothing_weights(weights, mask, dtype, num_classes, ndim):
  """w/K on the allowed classes (1/K without weights), 0 on masked ones; K = #allowed."""
  lead = (1,) * (ndim - 1)
  w = jnp.ones(lead + (1,), dtype) if weights is None else weights.astype(dtype).reshape(lead + (num_classes,))
  if mask is None:
    return w / num_classes
  k = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1).astype(dtype)
  return jnp.where(mask, w, 0) / k


def _label_nll(x, index, m, log_s):
  """lse(z) - z_c per row, from the unmasked logits (optax's reading of a masked label)."""
  return (log_s - (jnp.take_along_axis(x, index[..., None], axis=-1) - m))[..., 0]


def _int_forward(options, logits, labels, weights, mask):
  x = logits.astype(_checks.compute_dtype(logits.dtype))
  num_classes = x.shape[-1]
  y, log_s, m = _shifted(x, mask)
  valid, ignored, index, w_c = _label_terms(options, labels, weights, num_classes)
  # As optax: the label's logit is read unmasked, so a label on a masked class
  # gives lse_masked(z) - z_c and the gradient p̂ - onehot, which agree.
  loss = _label_nll(x, index, m, log_s)
  if w_c is not None:
    loss = w_c.astype(x.dtype) * loss
  eps = options.label_smoothing
  if eps:
    w = _smoothing_weights(weights, mask, x.dtype, num_classes, x.ndim)
    smooth = jnp.sum(jnp.where(w != 0, w * (log_s - y), 0), axis=-1)
    loss = (1 - eps) * loss + eps * smooth
  if options.z_loss:
    loss = loss + options.z_loss * jnp.square(m + log_s)[..., 0]
  loss = _checks.nan_where(~valid, loss)
  return jnp.where(_rows_kept(mask) & ~ignored, loss, 0), (m, log_s)


def _int_bwd(options, res, ct):
  logits, labels, weights, mask, (m, log_s) = res
  p_hat = _softmax(logits, mask, m, log_s)
  dtype, num_classes = p_hat.dtype, p_hat.shape[-1]
  valid, ignored, index, w_c = _label_terms(options, labels, weights, num_classes)
  classes = jax.lax.broadcasted_iota(labels.dtype, p_hat.shape, p_hat.ndim - 1)
  onehot = (classes == index[..., None]).astype(dtype)
  eps = options.label_smoothing
  label_mass = jnp.ones((), dtype) if w_c is None else w_c.astype(dtype)[..., None]
  total = (1 - eps) * label_mass
  target = total * onehot
  if eps:
    spread = eps * jnp.broadcast_to(_smoothing_weights(weights, mask, dtype, num_classes, p_hat.ndim), p_hat.shape)
    total, target = total + jnp.sum(spread, axis=-1, keepdims=True), target + spread
  if options.z_loss:
    total = total + 2 * options.z_loss * (m + log_s)
  grad = _checks.nan_where(~valid[..., None], p_hat * total - target)
  keep = _rows_kept(mask) & ~ignored
  grad = jnp.where(jnp.expand_dims(keep, -1), grad * ct[..., None], 0)
  grad_weights = None
  if weights is not None:
    # ∂L/∂w_i = (1-ε) 1{i=c} (lse - z_c) + (ε/K) allowed_i (lse - z_i), summed over rows.
    x = logits.astype(dtype)
    per_class = (1 - eps) * onehot * _label_nll(x, index, m, log_s)[..., None]
    if eps:
      spread = _smoothing_weights(None, mask, dtype, num_classes, p_hat.ndim)
      per_class = per_class + eps * spread * _neg_log_softmax(logits, mask, m, log_s)
    scale = jnp.where(keep, _checks.nan_where(~valid, ct), 0)[..., None]
    grad_weights = jnp.sum((per_class * scale).reshape(-1, num_classes), axis=0).astype(weights.dtype)
  return grad.astype(logits.dtype), None, grad_weights, None


# Per-row loss over the last axis: fused_integer_labels(options, logits, labels, weights, mask);
# NaN for labels out of range that are not the ignore index, 0 for ignored rows.
fused_integer_labels = _fused_loss(_int_forward, _int_bwd)


# Soft labels: L = Σp·logsumexp(z) - Σ p·z (Eq. 4.2.23 with 4.2.37).


def _soft_forward(options, logits, labels, mask):
  del options
  x = logits.astype(labels.dtype)
  y, log_s, m = _shifted(x, mask)
  keep = labels != 0 if mask is None else mask & (labels != 0)
  loss = jnp.sum(jnp.where(keep, labels * (log_s - y), 0), axis=-1)
  loss = _checks.nan_where(jnp.any(labels < 0, axis=-1), loss)
  return jnp.where(_rows_kept(mask), loss, 0), (m, log_s)


def _soft_bwd(options, res, ct):
  del options
  logits, labels, mask, (m, log_s) = res
  p_hat = _softmax(logits, mask, m, log_s)
  p = labels if mask is None else jnp.where(mask, labels, 0)
  total = jnp.sum(p, axis=-1, keepdims=True)
  grad_logits = p_hat * total - p
  grad_labels = _neg_log_softmax(logits, mask, m, log_s)
  bad = jnp.any(labels < 0, axis=-1, keepdims=True)
  kept = jnp.expand_dims(_rows_kept(mask), -1)
  scale = ct[..., None]

  def finish(g, dtype):
    g = _checks.nan_where(bad, g)
    return jnp.where(kept, g * scale, 0).astype(dtype)

  return finish(grad_logits, logits.dtype), finish(grad_labels, labels.dtype), None


# Per-row Σ p·(logsumexp(z) - z) over the last axis; NaN for negative targets.
fused_soft_labels = _fused_loss(_soft_forward, _soft_bwd)
