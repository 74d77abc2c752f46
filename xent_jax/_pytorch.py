"""``torch.nn.functional.cross_entropy`` with PyTorch's semantics, on the fused loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xent_jax import _checks, _core
from xent_jax._classification import (
  class_weight_vector,
  softmax_cross_entropy,
  softmax_cross_entropy_with_integer_labels,
)

ArrayLike = jax.typing.ArrayLike

REDUCTIONS = ("none", "mean", "sum")


def cross_entropy(
  logits: ArrayLike,
  target: ArrayLike,
  *,
  weight: ArrayLike | None = None,
  ignore_index: int = -100,
  reduction: str = "mean",
  label_smoothing: float = 0.0,
  axis: int = -1,
) -> jax.Array:
  r"""Cross-entropy with the semantics of ``torch.nn.functional.cross_entropy``.

  For class-index targets ``c`` (an integer array), per element

  .. math::
    \ell = (1-\varepsilon)\, w_c (\operatorname{lse}(z) - z_c)
      + \frac{\varepsilon}{C} \sum_i w_i (\operatorname{lse}(z) - z_i),

  0 where ``c == ignore_index``; ``"mean"`` divides the sum by Σ w_c over the
  elements not ignored (the count of them without ``weight``). For probability
  targets ``p`` (a float array of the logits' shape),

  .. math::
    \ell = -\sum_i w_i \big((1-\varepsilon) p_i + \varepsilon / C\big) \log \hat p_i,

  and ``"mean"`` divides by the number of elements. Seed Eq. 4.2.15–4.2.16,
  4.2.23, 4.2.37. Both kinds run on the fused ``custom_jvp`` losses
  (:func:`softmax_cross_entropy_with_integer_labels` and
  :func:`softmax_cross_entropy`), so the gradient is p̂·Σq − q and nothing
  N×C is stored for class indices.

  One deliberate difference: a ``"mean"`` over no elements (every target
  ignored, or weights summing to 0) is 0 with gradient 0, where PyTorch returns
  NaN.

  Args:
    logits: unnormalised log-probabilities; the class axis is ``axis`` (PyTorch's
      ``(N, C, d1, ...)`` layout is ``axis=1``).
    target: integer class indices of the logits' shape without ``axis``, or
      probabilities of the logits' shape.
    weight: per-class weights, shape ``[C]``.
    ignore_index: class-index targets equal to it are skipped. Only for class
      indices: a value other than the default with probability targets raises.
    reduction: ``"none"`` (per element), ``"mean"`` or ``"sum"``.
    label_smoothing: ε in [0, 1].
    axis: the class axis.

  Returns:
    float32 (for 16-bit logits) losses of the batch shape for ``"none"``, else
    a scalar. NaN where a class index is out of range (and not ignored) or a
    probability is negative or NaN.

  Examples:
    >>> import jax.numpy as jnp
    >>> import xent_jax
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1], [0.0, 0.0, 0.0]])
    >>> target = jnp.array([0, 1, -100])
    >>> print(round(float(xent_jax.cross_entropy(logits, target)), 4))
    1.614
    >>> print(round(float(xent_jax.cross_entropy(logits, target, weight=jnp.array([1.0, 3.0, 1.0]))), 4))
    2.2829

  References:
    ``torch.nn.functional.cross_entropy`` (PyTorch 2.x documentation).
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}.")
  if not isinstance(axis, int):
    raise TypeError(f"`axis` must be a single int (one class axis, as in PyTorch), got {axis!r}.")
  eps = _core.options(label_smoothing=label_smoothing, ignore_index=ignore_index).label_smoothing
  logits = _checks.as_floating(logits, "logits")
  target = jnp.asarray(target)
  if weight is not None:
    num_classes = logits.shape[_checks.normalize_axes(axis, logits.ndim)[0]]
    weight = class_weight_vector(weight, num_classes, "weight")
  if jnp.issubdtype(target.dtype, jnp.integer):
    per_example = softmax_cross_entropy_with_integer_labels(
      logits, target, axis, class_weights=weight, ignore_index=ignore_index, label_smoothing=eps
    )
    counted = target != ignore_index
    if weight is not None:
      counted = jnp.where(counted, weight[jnp.clip(target, 0, weight.shape[0] - 1)], 0)
    denominator = jnp.sum(counted.astype(per_example.dtype))
  elif jnp.issubdtype(target.dtype, jnp.floating):
    per_example = _probability_targets(logits, target, weight, ignore_index, eps, axis)
    denominator = jnp.asarray(per_example.size, per_example.dtype)
  else:
    raise TypeError(f"`target` must hold integer class indices or float probabilities, got dtype {target.dtype}.")
  if reduction == "none":
    return per_example
  total = jnp.sum(per_example)
  if reduction == "sum":
    return total
  return jnp.where(denominator != 0, total / jnp.where(denominator != 0, denominator, 1), 0)


def _probability_targets(
  logits: jax.Array, target: jax.Array, weight: jax.Array | None, ignore_index: int, eps: float, axis: int
) -> jax.Array:
  """Per-element loss for probability targets: soft CE of w·((1-ε)p + ε/C)."""
  if ignore_index != -100:
    raise ValueError(
      f"`ignore_index`={ignore_index} applies to class-index targets only; `target` holds probabilities."
    )
  if target.shape != logits.shape:
    raise ValueError(f"`target` of probabilities must have the logits' shape {logits.shape}, got {target.shape}.")
  class_axis = _checks.normalize_axes(axis, logits.ndim)[0]
  num_classes = logits.shape[class_axis]
  dtype = _checks.compute_dtype(logits.dtype, target.dtype)
  p = target.astype(dtype)
  p = _checks.nan_where(p < 0, p)  # smoothing must not hide a negative probability
  if eps:
    p = (1 - eps) * p + eps / num_classes
  if weight is not None:
    p = p * jnp.expand_dims(weight.astype(dtype), tuple(a for a in range(logits.ndim) if a != class_axis))
  return softmax_cross_entropy(logits, p, axis)
