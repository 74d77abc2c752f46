"""The integer-label cross-entropy mathematics, in one place.

Every integer-label loss (``softmax_cross_entropy_with_integer_labels``,
``cross_entropy`` with class indices, ``linear_cross_entropy``) reduces each
row of logits to a few statistics (M, log s = log Σ exp(z - M), the label's
logit, the smoothing sum) and takes its per-row loss and its per-row gradient
factors from here, so an option, a NaN rule or a dtype rule is changed here
once. With class weights w, label smoothing ε over the K allowed classes and
a z-loss ζ (PaLM's log²Z), seed Eq. 4.2.37–4.2.40:

  L = (1-ε) w_c (lse - z_c) + (ε/K) Σ_allowed w_i (lse - z_i) + ζ lse²,

the soft-label loss of q = (1-ε) w_c e_c + (ε/K) w·allowed plus ζ lse², so

  ∂L/∂z = p̂ (Σq + 2ζ lse) - (1-ε) w_c e_c - (ε/K) w·allowed.

The rules: a label outside [0, C) that is not the ignore index makes its row
NaN (value and gradient, through arithmetic so ``checkify`` sees it), and so
does a row whose allowed logits are all -inf or that holds a NaN logit
(``defined``); a row that is ignored or masked out by ``where`` counts 0
with gradient 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from xent_jax import _checks


class ClassAxis(NamedTuple):
  """Reductions over the class axis (the last axis of the local logits).

  Inside ``shard_map`` with ``axis_name`` the class axis is split over that
  mesh axis (vocabulary parallelism): each reduction is the local one
  combined with ``psum``/``pmax``.
  """

  axis_name: str | None = None

  def sum(self, x: jax.Array) -> jax.Array:
    return self.total(jnp.sum(x, axis=-1, keepdims=True))

  def total(self, local: jax.Array) -> jax.Array:
    """This shard's per-row sums, (..., 1), added over the shards."""
    return local if self.axis_name is None else jax.lax.psum(local, self.axis_name)

  def max(self, x: jax.Array) -> jax.Array:
    top = jnp.max(x, axis=-1, keepdims=True)
    return top if self.axis_name is None else jax.lax.pmax(top, self.axis_name)

  def offset(self, local: int) -> int | jax.Array:
    """Global index of this shard's first class."""
    return 0 if self.axis_name is None else jax.lax.axis_index(self.axis_name) * local

  def size(self, local: int) -> int:
    return local if self.axis_name is None else local * jax.lax.axis_size(self.axis_name)


class Options(NamedTuple):
  """Static options of an integer-label cross-entropy, validated by :func:`options`."""

  label_smoothing: float = 0.0
  z_loss: float = 0.0
  ignore_index: int | None = None


def options(label_smoothing: float = 0.0, z_loss: float = 0.0, ignore_index: int | None = None) -> Options:
  """The options, checked at trace time (each fault names its argument)."""
  return Options(
    label_smoothing=_checks.static_number(label_smoothing, "label_smoothing", low=0.0, high=1.0),
    z_loss=_checks.static_number(z_loss, "z_loss", low=0.0),
    ignore_index=_checks.static_index(ignore_index, "ignore_index"),
  )


class Rows(NamedTuple):
  """Per-row facts from the labels: ``valid`` (the label is a class or the ignore
  index) and ``counted`` (the row is kept by ``where`` and not ignored)."""

  valid: jax.Array
  counted: jax.Array


def rows(labels: jax.Array, num_classes: int, opts: Options, kept: jax.Array | bool = True) -> Rows:
  valid, ignored = _checks.label_validity(labels, num_classes, opts.ignore_index)
  return Rows(valid, kept & ~ignored)


def softmax_exists(s: jax.Array) -> jax.Array:
  """Whether a row with s = Σ exp(z - M) (M its max, or a shift below it) has a softmax: 0 < s < ∞.

  s = 0 when every allowed logit is -inf. s is NaN or +inf when a logit is
  NaN: XLA:CPU's library (YNNPACK) max and min drop a NaN operand instead of
  propagating it (measured from 4096 elements, issue 15), so a NaN logit may
  not reach the loss through the arithmetic, but it leaves s outside (0, ∞),
  since every exp(z - M) ≤ 1 otherwise. On a row that also holds a +inf
  logit the cap min(z - M, 0) drops the NaN and counts it as a +inf class;
  the kernels' +inf branches set s or the loss to NaN there
  (``_fused._nan_beside_inf``). Tested as log s finite, the same for every s
  but a subnormal one (which the max shift, s ≥ 1, never gives), so that
  the forward reads s once, through the log it needs anyway (with the label's
  logit read once too, ``_fused._neg_log_softmax``, one fusion fewer on
  XLA:CPU at 128×10; measured, issue 15).
  """
  return jnp.isfinite(jnp.log(s))


def defined(rows: Rows, s: jax.Array) -> Rows:
  """``rows`` with those that have no softmax (``softmax_exists``; s has shape ``(..., 1)``) marked
  invalid, so that such a row is NaN where it counts, its loss as optax's and its gradient too, and 0
  where it does not (every class masked)."""
  return Rows(rows.valid & softmax_exists(s[..., 0]), rows.counted)


def log_total(s: jax.Array) -> jax.Array:
  """log s for the gradient's row factors, and 0 for a row with s = 0.

  Such a row's factors are 0 or NaN by ``defined``, so its log s is never
  needed; with log 0 = -inf a 0 scale would meet a z-loss's 2ζ·lse or the
  class weights' lse - z_c as 0·∞ = NaN, and the derivatives of log s at 0
  would be infinite.
  """
  return jnp.log(jnp.where(s > 0, s, 1))


def count(rows: Rows, dtype: jax.typing.DTypeLike) -> jax.Array:
  """How many rows count: the denominator of a mean over tokens."""
  return jnp.sum(rows.counted.astype(dtype))


def loss(
  rows: Rows,
  opts: Options,
  label_nll: jax.Array,
  lse: jax.Array,
  smooth: jax.Array | None = None,
  label_weight: jax.Array | None = None,
) -> jax.Array:
  """The per-row loss from its statistics (each of one shape, e.g. ``(N, 1)``).

  ``label_nll`` is lse - z_c, ``smooth`` is Σ_allowed (w_i/K)(lse - z_i) (needed
  only with smoothing), ``label_weight`` is w_c (None without class weights).
  """
  out = label_nll if label_weight is None else label_weight * label_nll
  eps = opts.label_smoothing
  if eps:
    assert smooth is not None, "label smoothing needs the smoothing sum"
    out = (1 - eps) * out + eps * smooth
  if opts.z_loss:
    out = out + opts.z_loss * jnp.square(lse)
  valid, counted = (jnp.reshape(a, jnp.shape(out)) for a in jnp.broadcast_arrays(rows.valid, rows.counted))
  return jnp.where(counted, _checks.nan_where(~valid, out), 0)


class Factors(NamedTuple):
  """Per-row factors of ∂L/∂z = p̂·softmax - e_c·label - (w/K)·spread (each shaped like
  the row statistics); ``spread`` is None without smoothing. ``scale`` is the row's
  own factor: 1 where it counts, 0 where not, NaN for a bad label."""

  softmax: jax.Array
  label: jax.Array
  spread: jax.Array | None
  scale: jax.Array


def factors(
  rows: Rows,
  opts: Options,
  lse: jax.Array,
  spread_total: jax.Array | float | None = None,
  label_weight: jax.Array | None = None,
) -> Factors:
  """The gradient's row factors, with 0 for rows that do not count and NaN for bad labels.

  ``spread_total`` is Σ_allowed w_i/K (1 without weights and mask; needed only
  with smoothing). Everything per row is folded in here, so the N×C
  expression costs one exp and a few flops per element.
  """
  valid, counted = (jnp.reshape(a, lse.shape) for a in jnp.broadcast_arrays(rows.valid, rows.counted))
  scale = jnp.where(counted, _checks.nan_where(~valid, jnp.ones(lse.shape, lse.dtype)), 0)
  eps = opts.label_smoothing
  label = (1 - eps) * (scale if label_weight is None else label_weight.reshape(lse.shape) * scale)
  softmax = label
  spread = None
  if eps:
    assert spread_total is not None, "label smoothing needs the spread's total"
    spread = eps * scale
    softmax = softmax + spread * spread_total
  if opts.z_loss:
    # lse of a row that does not count may be ±inf (every class masked): 0, not 0·∞.
    softmax = softmax + 2 * opts.z_loss * jnp.where(counted, lse, 0) * scale
  return Factors(softmax, label, spread, scale)
