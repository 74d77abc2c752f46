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
  """A custom_vjp of (logits, labels, mask) saving the inputs and forward's row statistics."""

  @jax.custom_vjp
  def loss(logits: jax.Array, labels: jax.Array, mask: jax.Array | None) -> jax.Array:
    return forward(logits, labels, mask)[0]

  def fwd(logits, labels, mask):
    value, stats = forward(logits, labels, mask)
    return value, (logits, labels, mask, stats)

  loss.defvjp(fwd, backward)
  return loss


# Integer labels: L = logsumexp(z) - z_c (Eq. 4.2.37–4.2.38).


def _int_forward(logits, labels, mask):
  x = logits.astype(_checks.compute_dtype(logits.dtype))
  num_classes = x.shape[-1]
  _, log_s, m = _shifted(x, mask)
  in_range = (labels >= 0) & (labels < num_classes)
  index = jnp.clip(labels, 0, num_classes - 1)[..., None]
  # As optax: the label's logit is read unmasked, so a label on a masked class
  # gives lse_masked(z) - z_c and the gradient p̂ - onehot, which agree.
  label_logit = jnp.take_along_axis(x, index, axis=-1)
  loss = (log_s - (label_logit - m))[..., 0]
  loss = jnp.where(in_range, loss, jnp.nan)
  return jnp.where(_rows_kept(mask), loss, 0), (m, log_s)


def _int_bwd(res, ct):
  logits, labels, mask, (m, log_s) = res
  p_hat = _softmax(logits, mask, m, log_s)
  classes = jax.lax.broadcasted_iota(labels.dtype, p_hat.shape, p_hat.ndim - 1)
  grad = p_hat - (classes == labels[..., None]).astype(p_hat.dtype)
  in_range = (labels >= 0) & (labels < p_hat.shape[-1])
  grad = jnp.where(in_range[..., None], grad, jnp.nan)
  grad = jnp.where(jnp.expand_dims(_rows_kept(mask), -1), grad * ct[..., None], 0)
  return grad.astype(logits.dtype), None, None


# Per-row logsumexp(z) - z[label] over the last axis; NaN for labels out of range.
fused_integer_labels = _fused_loss(_int_forward, _int_bwd)


# Soft labels: L = Σp·logsumexp(z) - Σ p·z (Eq. 4.2.23 with 4.2.37).


def _soft_forward(logits, labels, mask):
  x = logits.astype(labels.dtype)
  y, log_s, m = _shifted(x, mask)
  keep = labels != 0 if mask is None else mask & (labels != 0)
  loss = jnp.sum(jnp.where(keep, labels * (log_s - y), 0), axis=-1)
  loss = jnp.where(jnp.any(labels < 0, axis=-1), jnp.nan, loss)
  return jnp.where(_rows_kept(mask), loss, 0), (m, log_s)


def _soft_bwd(res, ct):
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
    g = jnp.where(bad, jnp.nan, g)
    return jnp.where(kept, g * scale, 0).astype(dtype)

  return finish(grad_logits, logits.dtype), finish(grad_labels, labels.dtype), None


# Per-row Σ p·(logsumexp(z) - z) over the last axis; NaN for negative targets.
fused_soft_labels = _fused_loss(_soft_forward, _soft_bwd)
