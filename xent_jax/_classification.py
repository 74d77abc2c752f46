"""Classification losses under optax's names and signatures (seed section 4.2.2).

Each function here is a drop-in replacement for the optax loss of the same name
(optax 0.2.8): same positional arguments, same ``axis`` and ``where``
semantics, same per-example output shapes. They differ where optax returns NaN
although the mathematics is finite.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from xent_jax import _checks, _core, _fused, _limits
from xent_jax._checks import Axis
from xent_jax._info import xlogx

ArrayLike = jax.typing.ArrayLike


def _logits_and_mask(
  logits: ArrayLike, axis: Axis, where: ArrayLike | None
) -> tuple[jax.Array, jax.Array, jax.Array | None, tuple[int, ...], tuple[int, ...]]:
  """Validated logits, the same with the class axes flattened last, and the mask.

  ``where`` is read as optax reads it: one of another rank than the logits
  gets the class axes inserted (so a mask of the batch shape masks rows, also
  where the batch and class sizes agree), then broadcasts to the logits. A
  batch mask keeps a size-1 class axis, so no N×C mask is materialised for it.
  """
  logits = _checks.as_floating(logits, "logits")
  if logits.ndim == 0:
    raise ValueError("`logits` must have a class axis, got a scalar (shape ()).")
  axes = _checks.normalize_axes(axis, logits.ndim)
  if any(logits.shape[a] == 0 for a in axes):
    raise ValueError(f"`logits` of shape {logits.shape} has no classes along axis {axis!r}.")
  batch_shape = tuple(n for a, n in enumerate(logits.shape) if a not in axes)
  mask = None
  if where is not None:
    where = jnp.asarray(where, bool)
    if where.ndim != logits.ndim:
      if where.ndim > len(batch_shape):
        raise ValueError(
          f"`where` of shape {where.shape} gets the class axes {axes} inserted, so it must have rank at most"
          f" {len(batch_shape)} or the logits' rank {logits.ndim}."
        )
      # Left-padded to the batch rank, then the class axes inserted: optax's
      # expand_dims(where, axis) followed by broadcasting.
      where = jnp.expand_dims(where.reshape((1,) * (len(batch_shape) - where.ndim) + where.shape), axes)
    _checks.check_broadcastable(where.shape, logits.shape, "where", "logits")
    per_class = any(where.shape[a] != 1 for a in axes)
    shape = logits.shape if per_class else tuple(1 if a in axes else n for a, n in enumerate(logits.shape))
    mask = _checks.classes_last(jnp.broadcast_to(where, shape), axes)
  return logits, _checks.classes_last(logits, axes), mask, axes, batch_shape


def softmax_cross_entropy(
  logits: ArrayLike,
  labels: ArrayLike,
  axis: Axis = -1,
  where: ArrayLike | None = None,
  *,
  axis_name: str | None = None,
) -> jax.Array:
  r"""Fused softmax cross-entropy with probability (soft or one-hot) labels.

  .. math::
    L = -\sum_i p_i \log \hat p_i
      = \Big(\sum_i p_i\Big) \operatorname{logsumexp}(z) - \sum_i p_i z_i,
    \qquad \frac{\partial L}{\partial z} = \hat p \sum_i p_i - p

  Seed Eq. 4.2.23, 4.2.29–4.2.31, 4.2.37–4.2.40. A ``jax.custom_jvp`` whose
  tangent map is rematerialized: reverse mode keeps the logits as given, the
  labels, the mask and two scalars per example (the row max M and
  log Σ exp(z - M)) and recomputes the softmax; no softmax is stored. Terms
  with ``p_i = 0`` contribute 0 even where ``z_i = -inf``. Forward and
  reverse mode (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``, ``jax.grad``,
  ``jax.jacrev``) and second order (``jax.hessian``) all work.

  Args:
    logits: unnormalised log-probabilities, shape ``[..., num_classes]``.
    labels: target probabilities broadcastable to ``logits``; rows need not sum
      to 1 (the gradient keeps the Σp factor).
    axis: class axis or axes; ``None`` means all axes.
    where: elements to include, of the logits' shape or the batch shape. Rows
      with nothing included have loss 0 and gradient 0.
    axis_name: inside ``shard_map``, the mesh axis the class axis is split
      over (vocabulary parallelism): ``logits``, ``labels`` and a per-class
      ``where`` are this device's shards, the row max and sums are combined
      with ``pmax``/``psum``, the gradient stays local. One class axis only.

  Returns:
    per-example losses, the batch shape, float32 for 16-bit logits. NaN for an
    example with a negative or NaN target.

  Examples:
    >>> import jax.numpy as jnp
    >>> import xent_jax
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> print(xent_jax.softmax_cross_entropy(logits, labels))
    [0.2761 2.9518]

  References:
    optax.losses.softmax_cross_entropy, whose signature this follows.
  """
  logits, x, mask, axes, batch_shape = _logits_and_mask(logits, axis, where)
  class_axis = _class_axis(axis_name, axes)
  labels = _checks.broadcast_arg(jnp.asarray(labels), logits.shape, "labels", "logits")
  # Floating targets stay in their dtype (each pass converts them, so no
  # float32 copy of 16-bit targets is stored); integer or boolean one-hot
  # targets are taken as floats, as optax takes them.
  p = _checks.classes_last(labels, axes)
  if not jnp.issubdtype(p.dtype, jnp.floating):
    p = p.astype(_checks.compute_dtype(x.dtype))
  return _fused.fused_soft_labels(_fused.SoftOptions(class_axis), x, p, mask).reshape(batch_shape)


def _class_axis(axis_name: str | None, axes: tuple[int, ...]) -> _core.ClassAxis:
  if axis_name is not None and len(axes) != 1:
    raise ValueError(f"`axis_name` splits one class axis; got class axes {axes}.")
  return _core.ClassAxis(axis_name)


def softmax_cross_entropy_with_integer_labels(
  logits: ArrayLike,
  labels: ArrayLike,
  axis: Axis = -1,
  where: ArrayLike | None = None,
  *,
  class_weights: ArrayLike | None = None,
  ignore_index: int | None = None,
  label_smoothing: float = 0.0,
  z_loss: float = 0.0,
  axis_name: str | None = None,
) -> jax.Array:
  r"""Fused softmax cross-entropy with integer class labels.

  .. math::
    L = -\log \hat p_{c^*} = \operatorname{logsumexp}(z) - z_{c^*},
    \qquad \frac{\partial L}{\partial z_k} = \hat p_k - 1\{k = c^*\}

  Seed Eq. 4.2.15, 4.2.37–4.2.40. With the keyword-only options (PyTorch's
  meaning, per example) the loss is

  .. math::
    L = (1-\varepsilon)\, w_{c^*} (\operatorname{lse} - z_{c^*})
      + \frac{\varepsilon}{K} \sum_{i \in \text{allowed}} w_i (\operatorname{lse} - z_i)
      + \zeta \operatorname{lse}^2,

  the soft-label loss of ``q = (1-ε) w_c e_c + (ε/K) w`` plus PaLM's z-loss,
  with gradient ``p̂ (Σq + 2ζ lse) - q``. K is the number of classes allowed by
  ``where`` (all of them without it): smoothing puts no mass on masked
  classes, so the loss stays finite where they are ``-inf``. A
  ``jax.custom_jvp`` with a rematerialized tangent map: reverse mode keeps the
  logits as given, the labels, the weights, the mask and two scalars per
  example (M and log Σ exp(z - M)); no softmax is stored. Both autodiff modes
  and second order work, with respect to the logits and the class weights.

  Args:
    logits: unnormalised log-probabilities, shape ``[..., num_classes]``.
    labels: integer class indices, the logits' shape without the class axes.
      With a tuple ``axis`` a label is a flat index into those axes.
    axis: class axis or axes.
    where: elements to include, of the logits' shape or the batch shape. Rows
      with nothing included have loss 0 and gradient 0.
    class_weights: weight w_i of each class, shape ``[num_classes]`` (the
      flattened class axes); differentiable.
    ignore_index: a label value whose examples get loss 0 and gradient 0
      (PyTorch uses -100); ``None`` ignores nothing.
    label_smoothing: ε in [0, 1], static.
    z_loss: ζ ≥ 0, the weight of log²Z (PaLM uses 1e-4), static.
    axis_name: inside ``shard_map``, the mesh axis the class axis is split
      over (vocabulary parallelism, as Megatron's cross-entropy): ``logits``,
      a per-class ``where`` and ``class_weights`` are this device's shards,
      ``labels`` are global class indices; the label's logit comes from the
      shard that owns it, the row max and sums are combined with
      ``pmax``/``psum``, and the gradient stays local.

  Returns:
    per-example losses of the batch shape, float32 for 16-bit logits; NaN for
    an example whose label is outside ``[0, num_classes)`` and not
    ``ignore_index``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import xent_jax
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> print(xent_jax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1])))
    [0.2761 2.9518]
    >>> print(xent_jax.softmax_cross_entropy_with_integer_labels(
    ...     logits, jnp.array([0, -100]), ignore_index=-100, label_smoothing=0.1))
    [0.3995 0.    ]

  References:
    optax.losses.softmax_cross_entropy_with_integer_labels;
    ``torch.nn.functional.cross_entropy`` (weight, ignore_index,
    label_smoothing); Chowdhery et al., PaLM (2022), the z-loss.
  """
  _, x, mask, axes, batch_shape = _logits_and_mask(logits, axis, where)
  class_axis = _class_axis(axis_name, axes)
  labels = _checks.as_integer(labels, "labels")
  if labels.shape != batch_shape:
    raise ValueError(
      f"`labels` has shape {labels.shape}; expected the logits' shape without the class axes, {batch_shape}."
    )
  options = _fused.IntegerOptions(_core.options(label_smoothing, z_loss, ignore_index), class_axis)
  weights = None if class_weights is None else class_weight_vector(class_weights, x.shape[-1], "class_weights")
  return _fused.fused_integer_labels(options, x, labels, weights, mask)


def class_weight_vector(weights: ArrayLike, num_classes: int, name: str) -> jax.Array:
  """Validated per-class weights of shape (num_classes,)."""
  weights = _checks.as_floating(weights, name)
  if weights.shape != (num_classes,):
    raise ValueError(f"`{name}` must have shape ({num_classes},), one weight per class, got {weights.shape}.")
  return weights


def safe_softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  r"""Softmax cross-entropy treating 0·log 0 as 0, as optax's function of this name.

  .. math::
    L = -\sum_i p_i \log \hat p_i, \quad 0 \cdot \log 0 = 0

  Seed Eq. 4.2.23. :func:`softmax_cross_entropy` already follows this
  convention, so this is the same fused loss over the last axis.

  Args:
    logits: unnormalised log-probabilities, shape ``[..., num_classes]``.
    labels: target probabilities broadcastable to ``logits``.

  Returns:
    per-example losses, shape ``[...]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import xent_jax
    >>> logits = jnp.array([0.0, -jnp.inf])
    >>> print(xent_jax.safe_softmax_cross_entropy(logits, jnp.array([1.0, 0.0])))
    0.0
  """
  return softmax_cross_entropy(logits, labels)


def sigmoid_binary_cross_entropy(
  logits: ArrayLike,
  labels: ArrayLike,
  *,
  pos_weight: ArrayLike | None = None,
) -> jax.Array:
  r"""Elementwise binary cross-entropy of sigmoid logits.

  .. math::
    L = -[w_+ y \log \sigma(z) + (1-y) \log(1-\sigma(z))]
      = w_+ y\,\mathrm{softplus}(-z) + (1-y)\,\mathrm{softplus}(z),
    \qquad \frac{\partial L}{\partial z} = \sigma(z)(w_+ y + 1 - y) - w_+ y

  Seed Eq. 4.2.11, 4.2.19–4.2.22. A term whose weight (y or 1 - y) is 0 is 0,
  so ``z = +inf`` with ``y = 1`` (and ``-inf`` with ``0``) gives loss 0 and
  gradient 0, where optax returns NaN. Every derivative at ``z = ±inf`` is
  the mathematical limit, in both autodiff modes and to second order:
  ∂L/∂z → 1 - y or -w₊y; ∂L/∂y = w₊ softplus(-z) - softplus(z) is ∓inf at
  z = ±inf; ∂L/∂w₊ = y softplus(-z) is +inf at z = -inf unless y = 0 (then 0).

  Args:
    logits: logits of the positive class, any shape.
    labels: targets in [0, 1]; ``logits`` and ``labels`` broadcast against
      each other, as in optax (integer or boolean labels are taken).
    pos_weight: w₊, the weight of the positive term, broadcastable to the
      losses' shape (one per class on the last axis, as
      ``torch.nn.functional.binary_cross_entropy_with_logits``'s
      ``pos_weight``); ``None`` is 1.

  Returns:
    losses of the broadcast shape of ``logits`` and ``labels``, float32 for
    16-bit logits.

  Examples:
    >>> import jax.numpy as jnp
    >>> import xent_jax
    >>> jnp.set_printoptions(precision=4)
    >>> print(xent_jax.sigmoid_binary_cross_entropy(jnp.array([0.0, jnp.inf]), jnp.array([1.0, 1.0])))
    [0.6931 0.    ]
  """
  z, y = _checks.broadcast_pair(_checks.as_floating(logits, "logits"), jnp.asarray(labels), ("logits", "labels"))
  if pos_weight is None:
    w = jnp.ones((), z.dtype)
  else:
    w = _checks.broadcast_arg(_checks.as_floating(pos_weight, "pos_weight"), z.shape, "pos_weight", "logits")
  return _sigmoid_bce(z, y, w.astype(z.dtype))


@jax.custom_jvp
def _sigmoid_bce(z: jax.Array, y: jax.Array, w: jax.Array) -> jax.Array:
  """w y softplus(-z) + (1 - y) softplus(z), a term 0 where its weight is 0."""
  return _limits.xsoftplus(w * y, -z) + _limits.xsoftplus(1 - y, z)


def _sigmoid_bce_jvp(
  primals: tuple[jax.Array, jax.Array, jax.Array], tangents: tuple[_limits.Tangent, _limits.Tangent, _limits.Tangent]
) -> tuple[jax.Array, jax.Array]:
  # ∂L/∂z is finite; the softplus factors of ∂L/∂y and ∂L/∂w are ∞ at z = ∓inf,
  # so they go through softplus_product (0·∞ = 0, exact to every order).
  z, y, w = primals
  dz, dy, dw = tangents
  out = _sigmoid_bce(z, y, w)
  return out, _limits.tangent_sum(
    out,
    [
      (dz, lambda dz: ((1 - y) * jax.nn.sigmoid(z) - w * y * jax.nn.sigmoid(-z)) * dz),
      (dy, lambda dy: _limits.softplus_product(-z, w, dy) - _limits.softplus_product(z, jnp.ones_like(z), dy)),
      (dw, lambda dw: _limits.softplus_product(-z, y, dw)),
    ],
  )


_sigmoid_bce.defjvp(_sigmoid_bce_jvp, symbolic_zeros=True)


def binary_cross_entropy(probabilities: ArrayLike, labels: ArrayLike) -> jax.Array:
  r"""Elementwise binary cross-entropy of predicted probabilities.

  .. math::
    L = -[y \log \hat p + (1-y) \log(1-\hat p)],
    \qquad \frac{\partial L}{\partial \hat p} = -\Big(\frac{y}{\hat p} - \frac{1-y}{1-\hat p}\Big)

  Seed Eq. 4.2.11 and 4.2.19, with 0·log 0 = 0. Prefer
  :func:`sigmoid_binary_cross_entropy` on logits: probabilities rounded to 0
  or 1 lose the information the logits had. First derivatives at
  ``p̂ ∈ {0, 1}`` are the limits in both autodiff modes: ∂L/∂p̂ = 1 at
  (p̂, y) = (0, 0), -1 at (1, 1), ±inf where the prediction is certain and
  wrong; ∂L/∂y = log(1 - p̂) - log p̂ is ±inf there. Second derivatives are
  exact for 0 < p̂ < 1.

  Args:
    probabilities: predicted probability of the positive class, any shape.
    labels: targets in [0, 1] broadcastable to ``probabilities``.

  Returns:
    losses of the probabilities' shape; +inf where the prediction is certain
    and wrong, NaN for a probability outside [0, 1].

  Examples:
    >>> import jax.numpy as jnp
    >>> import xent_jax
    >>> jnp.set_printoptions(precision=4)
    >>> print(xent_jax.binary_cross_entropy(jnp.array([0.5, 0.9]), jnp.array([1.0, 1.0])))
    [0.6931 0.1054]
  """
  p = _checks.as_floating(probabilities, "probabilities")
  y = _checks.broadcast_arg(jnp.asarray(labels), p.shape, "labels", "probabilities")
  dtype = _checks.compute_dtype(p.dtype, y.dtype)
  p, y = p.astype(dtype), y.astype(dtype)
  return _bce_probabilities(_checks.nan_where(~((p >= 0) & (p <= 1)), p), y)


def _bce_probabilities_value(p: jax.Array, y: jax.Array) -> jax.Array:
  return -(jnp.where(y == 0, 0, y * jnp.log(p)) + jnp.where(y == 1, 0, (1 - y) * jnp.log1p(-p)))


def _bce_probabilities_partials(p: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  return _limits.ratio(1 - y, 1 - p) - _limits.ratio(y, p), jnp.log1p(-p) - jnp.log(p)


_bce_probabilities = _limits.elementwise(_bce_probabilities_value, _bce_probabilities_partials)


def mse_on_probabilities(
  logits: ArrayLike,
  labels: ArrayLike,
  axis: Axis = -1,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""Squared error between target probabilities and the softmax, per example.

  .. math::
    L = \sum_i (p_i - \hat p_i)^2, \qquad \hat p = \operatorname{softmax}(z)

  Seed Eq. 4.2.18, for comparison with cross-entropy: its gradient
  2 J (p̂ - p) vanishes as the softmax saturates, even when the prediction is
  wrong, where the cross-entropy gradient p̂ - p does not. ``+inf`` logits
  give the limit: p̂ shares the mass evenly among them (gradient 0 for one
  +inf logit); a row whose included logits are all ``-inf`` is undefined
  (NaN), a row with nothing included is 0.

  Args:
    logits: unnormalised log-probabilities, shape ``[..., num_classes]``.
    labels: target probabilities broadcastable to ``logits``.
    axis: class axis or axes.
    where: elements to include, broadcastable to ``logits``.

  Returns:
    per-example squared errors with the class axes removed.

  Examples:
    >>> import jax.numpy as jnp
    >>> import xent_jax
    >>> print(xent_jax.mse_on_probabilities(jnp.array([0.0, 0.0]), jnp.array([1.0, 0.0])))
    0.5
  """
  z = _checks.as_floating(logits, "logits")
  axes = _checks.normalize_axes(axis, z.ndim)
  p = _checks.broadcast_arg(jnp.asarray(labels), z.shape, "labels", "logits")
  dtype = _checks.compute_dtype(z.dtype, p.dtype)
  if where is not None:
    where = _checks.broadcast_arg(jnp.asarray(where, bool), z.shape, "where", "logits")
  p_hat = _softmax_with_limits(z.astype(dtype), axes, where)
  return jnp.sum(jnp.square(p.astype(dtype) - p_hat), axis=axes, where=where)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _softmax_with_limits(z: jax.Array, axes: tuple[int, ...], where: jax.Array | None) -> jax.Array:
  """softmax over ``axes``; where a row has +inf logits, its limit (the mass shared by them)."""
  m = jnp.max(z, axes, where=where, initial=-jnp.inf, keepdims=True)
  shifted = jnp.where(m == jnp.inf, jnp.where(z == jnp.inf, 0, -jnp.inf), z - m)
  e = jnp.exp(shifted) if where is None else jnp.where(where, jnp.exp(shifted), 0)
  total = jnp.sum(e, axes, keepdims=True)
  return e / jnp.where(total == 0, 1, total)


@_softmax_with_limits.defjvp
def _softmax_with_limits_jvp(
  axes: tuple[int, ...], primals: tuple[jax.Array, jax.Array | None], tangents: tuple[jax.Array, jax.Array | None]
) -> tuple[jax.Array, jax.Array]:
  (z, where), (dz, _) = primals, tangents
  p = _softmax_with_limits(z, axes, where)
  return p, p * (dz - jnp.sum(p * dz, axes, where=where, keepdims=True))


def _log_domain_pair(log_predictions: ArrayLike, other: ArrayLike, name: str) -> tuple[jax.Array, jax.Array]:
  lp = _checks.as_floating(log_predictions, "log_predictions")
  return _checks.broadcast_pair(lp, _checks.as_floating(other, name), ("log_predictions", name))


def kl_divergence(
  log_predictions: ArrayLike,
  targets: ArrayLike,
  axis: Axis = -1,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""KL divergence of predictions (in log space) from targets, as optax's.

  .. math::
    D_{KL}(P \| Q) = \sum_i p_i (\log p_i - \log q_i)

  Seed Eq. 4.2.4. Terms with ``targets = 0`` are 0 even where
  ``log_predictions = -inf`` (optax returns NaN there). Negative targets give
  NaN. Gradients are the limits, in both autodiff modes: ∂/∂log q_i = -p_i
  (0 at p_i = 0); ∂/∂p_i = log p_i + 1 - log q_i, with the p·log p part's
  derivative taken as 0 at p_i = 0 (see :mod:`xent_jax.info`), so -log q_i
  there: +inf where ``log_predictions = -inf``.

  Args:
    log_predictions: log-probabilities of the model, shape ``[..., n]``.
    targets: target probabilities, broadcastable to ``log_predictions``.
    axis: axis or axes to reduce.
    where: elements to include.

  Returns:
    divergences with ``axis`` removed.

  Examples:
    >>> import jax.numpy as jnp
    >>> import xent_jax
    >>> print(round(float(xent_jax.kl_divergence(jnp.log(jnp.array([0.25, 0.75])), jnp.array([0.5, 0.5]))), 6))
    0.143841
  """
  lp, t = _log_domain_pair(log_predictions, targets, "targets")
  terms = xlogx(t) - _limits.product(t, lp)
  return _checks.masked_sum(terms, axis, where, "log_predictions")


def kl_divergence_with_log_targets(
  log_predictions: ArrayLike,
  log_targets: ArrayLike,
  axis: Axis = -1,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""KL divergence with both distributions in log space, as optax's.

  .. math::
    D_{KL}(P \| Q) = \sum_i e^{\log p_i} (\log p_i - \log q_i)

  Seed Eq. 4.2.4–4.2.5. Terms with ``log_targets = -inf`` are 0, also where
  ``log_predictions = -inf`` (optax returns NaN there). Gradients, both
  autodiff modes: ∂/∂log q_i = -p_i; ∂/∂log p_i = p_i (log p_i - log q_i + 1),
  0 at ``log_targets = -inf`` and +inf at ``log_predictions = -inf``. Where
  both are ``-inf`` the partial in ``log_targets`` is undefined (the term
  jumps from +inf to 0); 0 is returned, its limit along log p = log q → -inf,
  so classes masked in both stay finite.

  Args:
    log_predictions: log-probabilities of the model, shape ``[..., n]``.
    log_targets: log-probabilities of the target, broadcastable.
    axis: axis or axes to reduce.
    where: elements to include.

  Returns:
    divergences with ``axis`` removed.

  Examples:
    >>> import jax.numpy as jnp
    >>> import xent_jax
    >>> lq, lp = jnp.log(jnp.array([0.25, 0.75])), jnp.log(jnp.array([1.0, 0.0]))
    >>> print(round(float(xent_jax.kl_divergence_with_log_targets(lq, lp)), 6))
    1.386294
  """
  terms = _log_target_kl_terms(*_log_domain_pair(log_predictions, log_targets, "log_targets"))
  return _checks.masked_sum(terms, axis, where, "log_predictions")


def _log_target_kl_value(lp: jax.Array, lt: jax.Array) -> jax.Array:
  return jnp.where(lt == -jnp.inf, 0, jnp.exp(lt) * (lt - lp))


def _log_target_kl_partials(lp: jax.Array, lt: jax.Array) -> tuple[jax.Array, jax.Array]:
  finite = lt != -jnp.inf
  safe_lt = jnp.where(finite, lt, 0)
  return -jnp.exp(lt), jnp.where(finite, jnp.exp(safe_lt) * (safe_lt - lp + 1), 0)


_log_target_kl_terms = _limits.elementwise(_log_target_kl_value, _log_target_kl_partials)
