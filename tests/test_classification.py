"""The optax-compatible losses against float64 references, optax and the closed forms."""

from typing import ClassVar

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from jax.experimental import checkify

import xent_jax
from xent_jax import closed_forms

import references as ref

ATOL32 = 1e-5


def _int_loss_sum(logits, labels, where=None):
  return jnp.sum(xent_jax.softmax_cross_entropy_with_integer_labels(logits, labels, where=where))


def _soft_loss_sum(logits, labels, where=None):
  return jnp.sum(xent_jax.softmax_cross_entropy(logits, labels, where=where))


class FusedLossTest(chex.TestCase):
  """Values and gradients of the fused losses, with and without jit."""

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(1)
    self.logits = rng.normal(size=(4, 7)).astype(np.float32) * 3
    self.labels = rng.integers(0, 7, size=4)
    self.soft = rng.dirichlet(np.ones(7), size=4).astype(np.float32)

  @chex.variants(with_jit=True, without_jit=True)
  def test_integer_labels_value_and_grad(self):
    loss, grad = self.variant(jax.value_and_grad(_int_loss_sum))(self.logits, self.labels)
    onehot = np.eye(7)[self.labels]
    np.testing.assert_allclose(loss, ref.integer_cross_entropy(self.logits, self.labels).sum(), rtol=1e-6)
    np.testing.assert_allclose(grad, ref.softmax_cross_entropy_grad(self.logits, onehot), atol=ATOL32)

  @chex.variants(with_jit=True, without_jit=True)
  def test_soft_labels_value_and_grad(self):
    loss, grad = self.variant(jax.value_and_grad(_soft_loss_sum))(self.logits, self.soft)
    np.testing.assert_allclose(loss, ref.softmax_cross_entropy(self.logits, self.soft).sum(), rtol=1e-6)
    np.testing.assert_allclose(grad, ref.softmax_cross_entropy_grad(self.logits, self.soft), atol=ATOL32)

  @chex.variants(with_jit=True, without_jit=True)
  def test_unnormalised_soft_labels_keep_the_sum_factor(self):
    p = 3.0 * self.soft
    grad = self.variant(jax.grad(_soft_loss_sum))(self.logits, p)
    np.testing.assert_allclose(grad, closed_forms.softmax_cross_entropy_gradient(self.logits, p), atol=1e-5)
    np.testing.assert_allclose(grad, ref.softmax_cross_entropy_grad(self.logits, p), atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_soft_label_gradient_is_minus_log_softmax(self):
    grad = self.variant(jax.grad(_soft_loss_sum, argnums=1))(self.logits, self.soft)
    np.testing.assert_allclose(grad, -ref.log_softmax(self.logits), rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_one_hot_equals_integer_labels(self):
    """Eq. 4.2.15: soft-label CE with a one-hot target is -log p̂ of the class."""
    onehot = jax.nn.one_hot(self.labels, 7)
    soft = self.variant(xent_jax.softmax_cross_entropy)(self.logits, onehot)
    hard = self.variant(xent_jax.softmax_cross_entropy_with_integer_labels)(self.logits, self.labels)
    chex.assert_trees_all_close(soft, hard, atol=1e-6, strict=True)

  @chex.variants(with_jit=True, without_jit=True)
  def test_masked_rows_and_classes(self):
    where = np.ones((4, 7), bool)
    where[0, 3:] = False
    where[1] = False
    labels = self.labels.copy()
    labels[0] = 1
    loss, grad = self.variant(jax.value_and_grad(_int_loss_sum))(self.logits, labels, where)
    onehot = np.eye(7)[labels]
    np.testing.assert_allclose(loss, ref.integer_cross_entropy(self.logits, labels, where).sum(), rtol=1e-6)
    np.testing.assert_allclose(grad, ref.softmax_cross_entropy_grad(self.logits, onehot, where), atol=ATOL32)
    np.testing.assert_array_equal(grad[1], 0.0)
    loss, grad = self.variant(jax.value_and_grad(_soft_loss_sum))(self.logits, self.soft, where)
    np.testing.assert_allclose(loss, ref.softmax_cross_entropy(self.logits, self.soft, where).sum(), rtol=1e-6)
    np.testing.assert_allclose(grad, ref.softmax_cross_entropy_grad(self.logits, self.soft, where), atol=ATOL32)

  @chex.variants(with_jit=True, without_jit=True)
  def test_batch_shaped_where_excludes_examples(self):
    where = np.array([True, False, True, False])
    loss = self.variant(xent_jax.softmax_cross_entropy_with_integer_labels)(self.logits, self.labels, where=where)
    expected = np.where(where, ref.integer_cross_entropy(self.logits, self.labels), 0.0)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    grad = self.variant(jax.grad(_soft_loss_sum))(self.logits, self.soft, where)
    np.testing.assert_array_equal(grad[~where], 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_minus_inf_logits_on_zero_target_classes(self):
    """optax 0.2.8 returns NaN here; the mathematics (and xent_jax) is finite."""
    logits = self.logits.copy()
    logits[:, 0] = -np.inf
    p = self.soft.copy()
    p[:, 0] = 0.0
    p /= p.sum(-1, keepdims=True)
    assert np.isnan(optax.losses.softmax_cross_entropy(logits, p)).all()
    loss, grad = self.variant(jax.value_and_grad(_soft_loss_sum))(logits, p)
    np.testing.assert_allclose(loss, ref.softmax_cross_entropy(logits, p).sum(), rtol=1e-6)
    np.testing.assert_allclose(grad, ref.softmax_cross_entropy_grad(logits, p), atol=ATOL32)
    labels = np.maximum(self.labels, 1)
    grad = self.variant(jax.grad(_int_loss_sum))(logits, labels)
    assert np.isfinite(grad).all()

  @chex.variants(with_jit=True, without_jit=True)
  def test_limit_path_mixed_rows(self):
    """One batch through the soft-label limit path: a -inf logit under p = 0 (finite), p > 0 on a
    -inf logit (+inf), a masked class holding NaN or +inf (it must not reach the loss), a
    negative target (NaN) and plain rows, each row against float64."""
    logits = self.logits.astype(np.float32)
    p, where = self.soft.copy(), np.ones((4, 7), bool)
    logits[0, 2], p[0, 2] = -np.inf, 0.0
    logits[1, 4] = -np.inf
    logits[2, 5], logits[2, 6], where[2, 5:] = np.nan, np.inf, False
    p[3, 1] = -0.25
    loss = np.asarray(self.variant(xent_jax.softmax_cross_entropy)(logits, p, where=where))
    want = ref.softmax_cross_entropy(logits, np.where(where, p, 0), where)
    np.testing.assert_allclose(loss[[0, 2]], want[[0, 2]], rtol=1e-6)
    assert np.isposinf(loss[1]) and np.isnan(loss[3]) and np.isfinite(want[[0, 2]]).all()

  @chex.variants(with_jit=True, without_jit=True)
  def test_huge_logits_stay_finite(self):
    logits = np.array([[3e38, -3e38, 0.0], [-3e38, 1e30, -1e30]], np.float32)
    labels = np.array([0, 1])
    loss, grad = self.variant(jax.value_and_grad(_int_loss_sum))(logits, labels)
    np.testing.assert_array_equal(loss, 0.0)
    np.testing.assert_array_equal(grad, 0.0)
    loss = self.variant(xent_jax.softmax_cross_entropy_with_integer_labels)(logits, np.array([2, 0]))
    np.testing.assert_allclose(loss, [3e38, 3e38 + 1e30], rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_single_class(self):
    logits = self.logits[:, :1]
    loss, grad = self.variant(jax.value_and_grad(_int_loss_sum))(logits, np.zeros(4, int))
    np.testing.assert_array_equal(loss, 0.0)
    np.testing.assert_array_equal(grad, 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_labels_out_of_range_give_nan(self):
    labels = np.array([7, -1, 0, 2])
    loss, grad = self.variant(
      jax.value_and_grad(lambda z, y: xent_jax.softmax_cross_entropy_with_integer_labels(z, y)[0])
    )(self.logits, labels)
    assert np.isnan(loss)
    assert np.isnan(grad[0]).all() and not np.isnan(grad[2:]).any()
    losses = self.variant(xent_jax.softmax_cross_entropy_with_integer_labels)(self.logits, labels)
    np.testing.assert_array_equal(np.isnan(losses), [True, True, False, False])

  @chex.variants(with_jit=True, without_jit=True)
  def test_negative_or_nan_targets_give_nan(self):
    p = self.soft.copy()
    p[0, 0] = -0.1
    p[1, 1] = np.nan
    losses = self.variant(xent_jax.softmax_cross_entropy)(self.logits, p)
    np.testing.assert_array_equal(np.isnan(losses), [True, True, False, False])


class OptaxCompatibilityTest(parameterized.TestCase):
  """Same numbers as optax 0.2.8 wherever optax is finite."""

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(2)
    self.logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    self.soft = rng.dirichlet(np.ones(5), size=(2, 3, 4)).astype(np.float32)
    self.where = rng.random((2, 3, 4, 5)) > 0.3

  @parameterized.parameters(*[{"axis": a} for a in (-1, 1, (1, 3), (3, 1), (-1, -3), (0, 2, 3), (3, 0, 2), None)])
  def test_soft_labels_axes(self, axis):
    labels = np.broadcast_to(self.soft, self.logits.shape)
    labels = labels / labels.sum(axis=axis, keepdims=True)
    ours = xent_jax.softmax_cross_entropy(self.logits, labels, axis)
    theirs = optax.losses.softmax_cross_entropy(self.logits, labels, axis)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-5, strict=True)
    if axis is not None:
      ours = xent_jax.softmax_cross_entropy(self.logits, labels, axis, where=self.where)
      theirs = optax.losses.softmax_cross_entropy(self.logits, labels, axis, where=self.where)
      chex.assert_trees_all_close(ours, theirs, rtol=1e-5, atol=1e-6, strict=True)

  def test_integer_one_hot_soft_labels(self):
    onehot = np.eye(5, dtype=np.int32)[np.random.default_rng(4).integers(0, 5, size=(2, 3, 4))]
    ours = xent_jax.softmax_cross_entropy(self.logits, onehot)
    # optax takes integer one-hot labels under standard promotion; under this suite's
    # strict promotion its product raises, so compare with the float one-hot.
    theirs = optax.losses.softmax_cross_entropy(self.logits, onehot.astype(np.float32))
    chex.assert_trees_all_close(ours, theirs, rtol=1e-5, strict=True)

  @parameterized.parameters(
    *[{"axis": a} for a in (-1, 2, (2, 3), (3, 2), (-1, -2), (1, 3), (3, 1), (-3, -1), (3, 0, 2))]
  )
  def test_integer_labels_axes(self, axis):
    axes = (axis,) if isinstance(axis, int) else axis
    axes = tuple(a % 4 for a in axes)
    n = int(np.prod([self.logits.shape[a] for a in axes]))
    batch = tuple(s for a, s in enumerate(self.logits.shape) if a not in axes)
    labels = np.random.default_rng(3).integers(0, n, size=batch)
    losses = (
      xent_jax.softmax_cross_entropy_with_integer_labels,
      optax.losses.softmax_cross_entropy_with_integer_labels,
    )

    # One compile per case for both libraries' values and gradients (eager, op by op, took 9-15 s).
    @jax.jit
    def values_and_grads(z):
      sums = [lambda z, loss=loss: jnp.sum(loss(z, labels, axis)) for loss in losses]
      return [(loss(z, labels, axis), jax.grad(total)(z)) for loss, total in zip(losses, sums, strict=True)]

    (ours, g_ours), (theirs, g_theirs) = values_and_grads(self.logits)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-5, strict=True)
    chex.assert_trees_all_close(g_ours, g_theirs, atol=1e-6, strict=True)

  @parameterized.parameters("full", "batch")
  def test_where(self, kind):
    where = self.where if kind == "full" else self.where[..., 0]
    where_full = self.where if kind == "full" else np.broadcast_to(where[..., None], self.logits.shape)
    labels = np.argmax(np.where(where_full, self.soft, -1), -1)
    p = np.where(where_full, self.soft, 0)
    for ours_fn, theirs_fn, y in [
      (xent_jax.softmax_cross_entropy, optax.losses.softmax_cross_entropy, p),
      (
        xent_jax.softmax_cross_entropy_with_integer_labels,
        optax.losses.softmax_cross_entropy_with_integer_labels,
        labels,
      ),
    ]:
      ours = ours_fn(self.logits, y, where=where)
      theirs = theirs_fn(self.logits, y, where=where)
      chex.assert_trees_all_close(ours, theirs, rtol=1e-5, atol=1e-6, strict=True)
      self.assertTrue(np.isfinite(ours).all())

  @parameterized.parameters(
    ((3, 3), (3,)),  # N == C: a batch mask, as optax reads it (not a class mask)
    ((2, 3, 4), (3,)),
    ((2, 3, 4), (2, 3)),
    ((4, 3), (4,)),
    ((3, 2, 4), (4,), 0),  # the class axis first: the mask covers the last batch axis
    ((2, 3, 4, 5), (4,), (1, 3)),
  )
  def test_lower_rank_where_read_as_optax_reads_it(self, shape, where_shape, axis=-1):
    rng = np.random.default_rng(5)
    z = rng.normal(size=shape).astype(np.float32)
    where = np.ones(where_shape, bool)
    where[0] = False
    axes = (axis,) if isinstance(axis, int) else axis
    batch = tuple(n for i, n in enumerate(shape) if i not in {a % len(shape) for a in axes})
    classes = int(np.prod([shape[a] for a in axes]))
    p = np.asarray(jax.nn.softmax(rng.normal(size=shape), axis=axes), np.float32)
    labels = rng.integers(1, classes, size=batch)
    for ours_fn, theirs_fn, y in [
      (xent_jax.softmax_cross_entropy, optax.losses.softmax_cross_entropy, p),
      (
        xent_jax.softmax_cross_entropy_with_integer_labels,
        optax.losses.softmax_cross_entropy_with_integer_labels,
        labels,
      ),
    ]:
      try:
        theirs = theirs_fn(z, y, axis=axis, where=where)
      except (ValueError, TypeError):
        continue  # optax raises; ours reads it as a batch mask of the leading axes or raises
      chex.assert_trees_all_close(ours_fn(z, y, axis=axis, where=where), theirs, rtol=1e-5, atol=1e-6, strict=True)

  def test_safe_softmax_cross_entropy(self):
    logits = self.logits.copy()
    logits[..., 0] = -np.inf
    p = self.soft.copy()
    p[..., 0] = 0
    chex.assert_trees_all_close(
      xent_jax.safe_softmax_cross_entropy(logits, p),
      optax.losses.safe_softmax_cross_entropy(logits, p),
      rtol=1e-5,
      strict=True,
    )

  def test_sigmoid_binary_cross_entropy(self):
    y = (self.soft > 0.2).astype(np.float32)
    chex.assert_trees_all_close(
      xent_jax.sigmoid_binary_cross_entropy(self.logits, y),
      optax.losses.sigmoid_binary_cross_entropy(self.logits, y),
      rtol=1e-5,
      strict=True,
    )

  @parameterized.parameters(*[{"axis": a} for a in (-1, (2, 3))])
  def test_kl_divergences(self, axis):
    lq = jax.nn.log_softmax(self.logits, axis=-1)
    lp = jax.nn.log_softmax(2 * self.logits, axis=-1)
    chex.assert_trees_all_close(
      xent_jax.kl_divergence(lq, jnp.exp(lp), axis),
      optax.losses.kl_divergence(lq, jnp.exp(lp), axis),
      rtol=1e-5,
      atol=1e-6,
      strict=True,
    )
    chex.assert_trees_all_close(
      xent_jax.kl_divergence_with_log_targets(lq, lp, axis, where=self.where),
      optax.losses.kl_divergence_with_log_targets(lq, lp, axis, where=self.where),
      rtol=1e-5,
      atol=1e-6,
      strict=True,
    )

  def test_drop_in_signatures(self):
    import inspect

    for name in [
      "softmax_cross_entropy",
      "softmax_cross_entropy_with_integer_labels",
      "safe_softmax_cross_entropy",
      "sigmoid_binary_cross_entropy",
      "kl_divergence",
      "kl_divergence_with_log_targets",
    ]:
      ours = list(inspect.signature(getattr(xent_jax, name)).parameters)
      theirs = list(inspect.signature(getattr(optax.losses, name)).parameters)
      self.assertEqual(ours[: len(theirs)], theirs, name)


class SecondOrderTest(parameterized.TestCase):
  @parameterized.parameters(1, 2, 5)
  def test_hessian_is_softmax_jacobian(self, c):
    """Eq. 4.2.32: ∂²L/∂z² = diag(p̂) - p̂p̂ᵀ, through the custom_vjp's backward."""
    z = np.random.default_rng(c).normal(size=c).astype(np.float32)
    p = np.random.default_rng(c + 1).dirichlet(np.ones(c)).astype(np.float32)
    expected = closed_forms.softmax_jacobian(z)
    # Under jit: one compile each (eager, op by op, took 6-15 s).
    h_soft = jax.jit(jax.hessian(xent_jax.softmax_cross_entropy))(z, p)
    h_int = jax.jit(jax.hessian(xent_jax.softmax_cross_entropy_with_integer_labels))(z, np.array(0))
    chex.assert_trees_all_close(h_soft, expected, atol=1e-6, strict=True)
    chex.assert_trees_all_close(h_int, expected, atol=1e-6, strict=True)
    s = np.exp(z - np.max(z)) / np.exp(z - np.max(z)).sum()
    np.testing.assert_allclose(h_soft, np.diag(s) - np.outer(s, s), atol=1e-6)

  @parameterized.parameters("jacfwd", "jacrev")
  def test_jacobian_is_softmax_minus_target(self, mode):
    """Eq. 4.2.40 in both autodiff modes: ∂L_n/∂z_n = p̂_n·Σp_n - p_n (float64 numpy reference)."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(3, 4)).astype(np.float32)
    labels = np.array([0, 3, 1])
    p = 2.0 * rng.dirichlet(np.ones(4), size=3).astype(np.float32)
    jac = getattr(jax, mode)
    got_int = jax.jit(jac(xent_jax.softmax_cross_entropy_with_integer_labels))(z, labels)
    got_soft = jax.jit(jac(xent_jax.softmax_cross_entropy))(z, p)
    want_int, want_soft = np.zeros((3, 3, 4)), np.zeros((3, 3, 4))
    for n in range(3):
      s = ref.softmax(np.float64(z[n]))
      want_int[n, n] = s - np.eye(4)[labels[n]]
      want_soft[n, n] = s * np.float64(p[n]).sum() - p[n]
    np.testing.assert_allclose(got_int, want_int, atol=1e-6)
    np.testing.assert_allclose(got_soft, want_soft, atol=1e-6)

  def test_jacrev_per_example(self):
    z = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    labels = np.array([0, 3, 1])
    jac = jax.jit(jax.jacrev(xent_jax.softmax_cross_entropy_with_integer_labels))(z, labels)
    expected = np.zeros((3, 3, 4))
    for n in range(3):
      expected[n, n] = ref.softmax(z[n]) - np.eye(4)[labels[n]]
    np.testing.assert_allclose(jac, expected, atol=1e-6)


class DtypeTest(parameterized.TestCase):
  @parameterized.parameters(jnp.bfloat16, jnp.float16, jnp.float32)
  def test_low_precision_in_float32_out(self, dtype):
    rng = np.random.default_rng(4)
    z = jnp.asarray(rng.normal(size=(3, 6)), dtype)
    labels = np.array([0, 5, 2])
    p = jnp.asarray(rng.dirichlet(np.ones(6), size=3), dtype)
    for fn, y in [(_int_loss_sum, labels), (_soft_loss_sum, p)]:
      loss, grad = jax.value_and_grad(fn)(z, y)
      self.assertEqual(loss.dtype, jnp.float32)
      self.assertEqual(grad.dtype, dtype)
    loss = xent_jax.softmax_cross_entropy_with_integer_labels(z, labels)
    np.testing.assert_allclose(loss, ref.integer_cross_entropy(np.asarray(z, np.float64), labels), rtol=1e-6)
    self.assertEqual(xent_jax.sigmoid_binary_cross_entropy(z, p).dtype, jnp.float32)
    self.assertEqual(jax.grad(lambda z: jnp.sum(xent_jax.sigmoid_binary_cross_entropy(z, p)))(z).dtype, dtype)

  def test_float64_with_x64(self):
    rng = np.random.default_rng(5)
    z = rng.normal(size=(3, 6)) * 20
    labels = np.array([0, 5, 2])
    with jax.enable_x64(True):
      loss, grad = jax.value_and_grad(_int_loss_sum)(jnp.asarray(z), labels)
      self.assertEqual(loss.dtype, jnp.float64)
      self.assertEqual(grad.dtype, jnp.float64)
    np.testing.assert_allclose(loss, ref.integer_cross_entropy(z, labels).sum(), rtol=1e-13)
    np.testing.assert_allclose(grad, ref.softmax_cross_entropy_grad(z, np.eye(6)[labels]), atol=1e-14)


class ElementwiseLossTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_sigmoid_bce_values_and_grad(self):
    z = np.array([-30.0, -2.0, 0.0, 0.5, 40.0], np.float32)
    y = np.array([0.0, 1.0, 0.3, 1.0, 1.0], np.float32)
    loss, grad = self.variant(jax.value_and_grad(lambda z, y: jnp.sum(xent_jax.sigmoid_binary_cross_entropy(z, y))))(
      z, y
    )
    np.testing.assert_allclose(loss, ref.sigmoid_bce(z, y).sum(), rtol=1e-6)
    np.testing.assert_allclose(grad, closed_forms.sigmoid_binary_cross_entropy_gradient(z, y), atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_sigmoid_bce_infinite_logits(self):
    """optax returns NaN at ±inf logits with agreeing labels; the loss is 0."""
    z = np.array([np.inf, -np.inf, np.inf], np.float32)
    y = np.array([1.0, 0.0, 0.0], np.float32)
    assert np.isnan(optax.losses.sigmoid_binary_cross_entropy(z[:2], y[:2])).all()
    loss, grad = self.variant(jax.value_and_grad(lambda z, y: xent_jax.sigmoid_binary_cross_entropy(z, y)[:2].sum()))(
      z, y
    )
    np.testing.assert_array_equal(loss, 0.0)
    np.testing.assert_array_equal(grad, 0.0)
    self.assertEqual(float(self.variant(xent_jax.sigmoid_binary_cross_entropy)(z, y)[2]), np.inf)

  @chex.variants(with_jit=True, without_jit=True)
  def test_binary_cross_entropy_on_probabilities(self):
    p = np.array([1e-6, 0.2, 0.5, 0.9, 1.0, 0.0], np.float32)
    y = np.array([0.0, 1.0, 0.4, 0.0, 1.0, 0.0], np.float32)
    loss, grad = self.variant(jax.value_and_grad(lambda p, y: jnp.sum(xent_jax.binary_cross_entropy(p, y)[:4])))(p, y)
    p64, y64 = p.astype(np.float64)[:4], y.astype(np.float64)[:4]
    np.testing.assert_allclose(loss, -(y64 * np.log(p64) + (1 - y64) * np.log1p(-p64)).sum(), rtol=1e-6)
    np.testing.assert_allclose(grad[:4], closed_forms.binary_cross_entropy_gradient(p[:4], y[:4]), rtol=1e-5)
    np.testing.assert_array_equal(self.variant(xent_jax.binary_cross_entropy)(p, y)[4:], 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_binary_cross_entropy_equals_two_class_cross_entropy(self):
    """Eq. 4.2.11: BCE on σ(z) is CE over the logits (0, z)."""
    z = np.linspace(-5, 5, 7).astype(np.float32)
    y = np.linspace(0, 1, 7).astype(np.float32)
    two_class = self.variant(xent_jax.softmax_cross_entropy)(
      np.stack([np.zeros_like(z), z], -1), np.stack([1 - y, y], -1)
    )
    bce = self.variant(xent_jax.sigmoid_binary_cross_entropy)(z, y)
    chex.assert_trees_all_close(two_class, bce, atol=2e-6, strict=True)

  @chex.variants(with_jit=True, without_jit=True)
  def test_mse_on_probabilities(self):
    z = np.random.default_rng(6).normal(size=(3, 4)).astype(np.float32)
    p = np.eye(4, dtype=np.float32)[[0, 1, 3]]
    loss, grad = self.variant(jax.value_and_grad(lambda z, p: jnp.sum(xent_jax.mse_on_probabilities(z, p))))(z, p)
    np.testing.assert_allclose(loss, np.sum((p - ref.softmax(z)) ** 2), rtol=1e-6)
    np.testing.assert_allclose(grad, closed_forms.mse_on_probabilities_gradient(z, p), atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_kl_zero_targets_with_minus_inf_predictions(self):
    """optax returns NaN here; the terms with zero target are 0."""
    lq = np.array([[-np.inf, np.log(0.5), np.log(0.5)]], np.float32)
    p = np.array([[0.0, 0.25, 0.75]], np.float32)
    log_p = np.array([[-np.inf, np.log(0.25), np.log(0.75)]], np.float32)
    expected = 0.25 * np.log(0.5) + 0.75 * np.log(1.5)
    assert np.isnan(optax.losses.kl_divergence(lq, p)).all()
    for fn, t in [(xent_jax.kl_divergence, p), (xent_jax.kl_divergence_with_log_targets, log_p)]:
      total = lambda a, b, fn=fn: jnp.sum(fn(a, b))
      loss, grads = self.variant(jax.value_and_grad(total, argnums=(0, 1)))(lq, t)
      np.testing.assert_allclose(loss, expected, rtol=1e-6)
      # ∂/∂log q = -p is finite (0 on the zero target); ∂/∂p at p = 0 holds log p → -inf,
      # an infinite partial the mathematics gives, so only the first is checked finite.
      np.testing.assert_allclose(grads[0], -p, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_kl_negative_target_is_nan(self):
    lq = np.log(np.array([0.5, 0.5], np.float32))
    self.assertTrue(np.isnan(self.variant(xent_jax.kl_divergence)(lq, np.array([-0.1, 1.1], np.float32))))


class TraceAndBatchTest(parameterized.TestCase):
  def test_one_trace_per_shape(self):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss(z, labels):
      return xent_jax.softmax_cross_entropy_with_integer_labels(z, labels)

    rng = np.random.default_rng(7)
    for _ in range(3):
      loss(rng.normal(size=(2, 3)).astype(np.float32), rng.integers(0, 3, 2))

  @parameterized.parameters("int", "soft")
  def test_vmap_matches_batched_call(self, kind):
    rng = np.random.default_rng(8)
    z = rng.normal(size=(5, 2, 3)).astype(np.float32)
    y = rng.integers(0, 3, (5, 2)) if kind == "int" else rng.dirichlet(np.ones(3), (5, 2)).astype(np.float32)
    fn = xent_jax.softmax_cross_entropy_with_integer_labels if kind == "int" else xent_jax.softmax_cross_entropy
    grad = jax.grad(lambda a, b: jnp.sum(fn(a, b)))
    # One compile for all four (eager, op by op, took 10-18 s).
    batched, mapped, g_batched, g_mapped = jax.jit(
      lambda z, y: (fn(z, y), jax.vmap(fn)(z, y), grad(z, y), jax.vmap(grad)(z, y))
    )(z, y)
    chex.assert_trees_all_close(batched, mapped, strict=True)
    chex.assert_trees_all_close(g_mapped, g_batched, atol=1e-7, strict=True)

  def test_empty_batch(self):
    """A batch of no examples gives no losses and an empty gradient, as optax (it raised in the class
    axis's reshape; review of issue 15)."""
    z = jnp.zeros((0, 4))
    for fn, y, theirs in (
      (
        xent_jax.softmax_cross_entropy_with_integer_labels,
        jnp.zeros(0, jnp.int32),
        optax.losses.softmax_cross_entropy_with_integer_labels,
      ),
      (xent_jax.softmax_cross_entropy, z, optax.losses.softmax_cross_entropy),
    ):
      value, grad = jax.jit(jax.value_and_grad(lambda z, y, fn=fn: jnp.sum(fn(z, y))))(z, y)
      self.assertEqual((fn(z, y).shape, float(value), grad.shape), (theirs(z, y).shape, 0.0, (0, 4)))


class InfiniteLogitsTest(parameterized.TestCase):
  """+inf logits: the softmax's limit is uniform over the infinite classes (issue: NaN before)."""

  @parameterized.parameters(8, 4096)  # the few-pass path, with a row of fewer and of more than 4095 classes
  def test_rows_without_softmax_are_nan_and_reported(self, classes):
    """A row whose allowed logits are all -inf, its label on a masked class, and a row with a NaN beside
    a +inf logit (XLA:CPU's library max drops the NaN from 4096 elements): NaN, and checkify reports it.
    A few-pass forward that left these rows to the arithmetic gave -inf and +inf (review of issue 15)."""
    z = np.zeros((2, classes), np.float32)
    z[0, 1:] = -np.inf
    z[1, 0], z[1, 1] = np.inf, np.nan
    where = np.ones((2, classes), bool)
    where[0, 0] = False
    loss = lambda z: xent_jax.softmax_cross_entropy_with_integer_labels(z, np.array([0, 2]), where=where)
    err, value = jax.jit(checkify.checkify(loss, errors=checkify.float_checks))(z)
    self.assertTrue(np.isnan(value).all(), value)
    self.assertIsNotNone(err.get())

  Z = np.array([[np.inf, 1.0, 2.0], [np.inf, np.inf, 0.0], [1.0, np.inf, 0.0]], np.float32)
  LABELS = np.array([0, 1, 0])
  # The limits: loss -log p̂_c with p̂ = 1/k on the k infinite classes; gradient p̂ - onehot.
  WANT_LOSS = np.array([0.0, np.log(2.0), np.inf], np.float32)
  WANT_GRAD = np.array([[0, 0, 0], [0.5, -0.5, 0], [-1, 1, 0]], np.float32)

  @parameterized.parameters("grad", "jacfwd")
  def test_integer_labels(self, mode):
    loss = lambda z: xent_jax.softmax_cross_entropy_with_integer_labels(z, self.LABELS)
    np.testing.assert_array_equal(loss(self.Z), self.WANT_LOSS)
    total = lambda z: jnp.sum(jnp.array([1.0, 1.0, 0.0]) * loss(z))  # the third row's loss is +inf
    grad = getattr(jax, mode)(total)(self.Z)
    np.testing.assert_allclose(grad, self.WANT_GRAD * np.array([[1], [1], [0]]), atol=1e-7)
    g3 = jax.grad(lambda z: loss(z)[2])(self.Z)
    np.testing.assert_allclose(g3, self.WANT_GRAD * np.array([[0], [0], [1]]), atol=1e-7)

  @parameterized.parameters("grad", "jacfwd")
  def test_soft_labels(self, mode):
    p = np.array([[1, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0]], np.float32)
    loss = lambda z: xent_jax.softmax_cross_entropy(z, p)
    np.testing.assert_array_equal(loss(self.Z), np.array([0.0, np.log(2.0), np.inf], np.float32))
    grad = getattr(jax, mode)(lambda z: jnp.sum(loss(z)[:2]))(self.Z)
    np.testing.assert_allclose(grad, np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0]], np.float32), atol=1e-7)

  def test_smoothing_beside_an_infinite_logit_is_infinite(self):
    loss = xent_jax.softmax_cross_entropy_with_integer_labels(self.Z[:1], self.LABELS[:1], label_smoothing=0.1)
    np.testing.assert_array_equal(loss, [np.inf])

  def test_soft_labels_checkify_clean(self):
    """A +inf logit with zero targets elsewhere, and a -inf logit under a zero target, are clean input:
    checkify's float checks report nothing, value or gradient (review of issue 15: 0·∞ in a dropped branch)."""
    if not xent_jax._fused._small(np.zeros((1, 3))):
      self.skipTest("the large path's summed value reads inf - inf before its cond discards it (_soft_value)")
    cases = [([np.inf, 0.0, 1.0], [1.0, 0.0, 0.0]), ([-np.inf, 0.0, 1.0], [0.0, 0.5, 0.5])]
    for z, p in cases:
      z, p = np.array([z], np.float32), np.array([p], np.float32)
      loss = lambda z, p=p: jnp.sum(xent_jax.softmax_cross_entropy(z, p))
      for fn in (loss, jax.grad(loss)):
        err, _ = checkify.checkify(jax.jit(fn), errors=checkify.float_checks)(z)
        self.assertIsNone(err.get())

  def test_subnormal_target_as_a_constant_is_never_nan(self):
    """XLA:CPU folds p > 0 as true for a subnormal constant that it flushes to 0 at run time: the loss
    where p̂ = 0 is then +inf (its mathematical value), or 0.81 as computed from an argument, never NaN."""
    z = np.array([[0.0, -np.inf, 1.0]], np.float32)
    p = np.array([[0.5, np.float32(1e-45), 0.5]], np.float32)
    loss = jax.jit(lambda z: jnp.sum(xent_jax.softmax_cross_entropy(z, p)))
    assert not np.isnan(loss(z))
    np.testing.assert_allclose(jax.grad(loss)(z), [[1 / (1 + np.e) - 0.5, 0, 0.5 - 1 / (1 + np.e)]], atol=1e-6)


class FullyMaskedRowTest(parameterized.TestCase):
  """A row that `where` masks out entirely counts 0 with every option, in every derivative (its lse is -inf)."""

  # Each option with each kind of mask, weighted or not, the masked row's logits finite or -inf (six of the 24
  # combinations, each compiling seven functions).
  @parameterized.parameters(
    ({"z_loss": 1e-3}, False, "classes", -np.inf),
    ({"z_loss": 1e-3}, True, "batch", 0.0),
    ({"label_smoothing": 0.1}, True, "classes", -np.inf),
    ({"label_smoothing": 0.1}, False, "batch", -np.inf),
    ({"z_loss": 1e-3, "label_smoothing": 0.1}, True, "classes", 0.0),
    ({"z_loss": 1e-3, "label_smoothing": 0.1}, True, "batch", -np.inf),
  )
  def test_zero_in_value_and_every_derivative(self, options, weighted, mask, masked_logits):
    rng = np.random.default_rng(3)
    z = rng.normal(size=(3, 5)).astype(np.float32)
    z[1] = masked_logits
    y = np.array([0, 3, 4])
    w = rng.uniform(0.5, 2.0, size=5).astype(np.float32) if weighted else None
    where = np.ones((3, 5), bool) if mask == "classes" else np.ones(3, bool)
    where[1] = False
    kept = np.array([0, 2])

    def loss(z, w, where, y):
      return xent_jax.softmax_cross_entropy_with_integer_labels(z, y, where=where, class_weights=w, **options)

    total = jax.jit(lambda z, w, where, y: jnp.sum(loss(z, w, where, y)))
    per_row = jax.jit(loss)(z, w, where, y)
    self.assertEqual(float(per_row[1]), 0.0)
    # The other rows are the loss of the batch without the masked row.
    np.testing.assert_allclose(per_row[kept], jax.jit(loss)(z[kept], w, where[kept], y[kept]), rtol=1e-6)
    argnums = (0, 1) if weighted else (0,)
    grads = jax.jit(jax.grad(total, argnums))(z, w, where, y)
    alone = jax.jit(jax.grad(total, argnums))(z[kept], w, where[kept], y[kept])
    np.testing.assert_array_equal(grads[0][1], 0.0)
    np.testing.assert_allclose(grads[0][kept], alone[0], rtol=1e-6, atol=1e-7)
    if weighted:
      np.testing.assert_allclose(grads[1], alone[1], rtol=1e-5, atol=1e-7)
      jac_w = jax.jit(jax.jacfwd(loss, 1))(z, w, where, y)
      np.testing.assert_array_equal(jac_w[1], 0.0)
    jac_z = jax.jit(jax.jacfwd(loss))(z, w, where, y)
    np.testing.assert_array_equal(jac_z[1], 0.0)
    np.testing.assert_array_equal(jac_z[:, 1], 0.0)
    hessian = jax.jit(jax.hessian(total))(z, w, where, y)
    self.assertTrue(np.isfinite(hessian).all())
    np.testing.assert_array_equal(hessian[1], 0.0)

  @parameterized.parameters(5, 8192)  # the few-pass and the large-input path
  def test_second_order_in_the_class_weights_skips_empty_rows(self, classes):
    """Reverse over reverse in the class weights (a gradient penalty) with a row that ``where`` masks out
    and an ignored row of -inf logits (both s = 0): the same as without those rows. A row factor divided
    by s = 0 sent its cotangent 0/0 = NaN to the label's weight (review of issue 15)."""
    rng = np.random.default_rng(6)
    z = rng.normal(size=(4, classes)).astype(np.float32)
    z[2] = -np.inf
    y = np.array([0, 2, -100, 1])
    w = rng.uniform(0.5, 2.0, classes).astype(np.float32)
    kept_rows = np.array([True, False, True, True])
    kept = np.array([0, 3])

    def penalty(w, z, y, where):
      loss = lambda z: jnp.sum(
        xent_jax.softmax_cross_entropy_with_integer_labels(z, y, class_weights=w, ignore_index=-100, where=where)
      )
      return jnp.sum(jax.grad(loss)(z) ** 2)

    got = jax.jit(jax.grad(penalty))(w, z, y, kept_rows)
    want = jax.jit(jax.grad(penalty))(w, z[kept], y[kept], kept_rows[kept])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)

  def test_reverse_over_reverse_skips_an_ignored_row_of_minus_inf(self):
    """jacrev of grad with an ignored row whose logits are all -inf (s = 0): 0 on that row, the rest as
    without it. 1/s = inf in the dropped branch of the row factor's where made it NaN (review of issue 15)."""
    z = np.random.default_rng(8).normal(size=(3, 4)).astype(np.float32)
    z[1] = -np.inf
    if not xent_jax._fused._small(z):
      self.skipTest("large path: still NaN there, through the label-shifted exps (issue 15's note)")
    y = np.array([0, -100, 3])
    total = lambda z, y: jnp.sum(xent_jax.softmax_cross_entropy_with_integer_labels(z, y, ignore_index=-100))
    hessian = jax.jit(jax.jacrev(jax.grad(total)))(z, y)
    kept = np.array([0, 2])
    alone = jax.jit(jax.jacrev(jax.grad(total)))(z[kept], y[kept])
    np.testing.assert_array_equal(hessian[1], 0.0)
    np.testing.assert_array_equal(hessian[:, :, 1], 0.0)
    np.testing.assert_allclose(hessian[kept][:, :, kept], alone, rtol=1e-6, atol=1e-7)

  @parameterized.parameters(5, 8192)
  def test_a_counted_row_without_softmax_is_nan_on_its_whole_gradient_row(self, classes):
    """All -inf logits, or a NaN logit, in a row that counts: NaN on every entry of its gradient row, as
    optax (not 0 where a row factor of NaN over s = 0 was replaced by 0; review of issue 15)."""
    z = np.zeros((3, classes), np.float32)
    z[1] = -np.inf
    z[2, 3] = np.nan
    grad = jax.jit(
      jax.grad(lambda z: jnp.sum(xent_jax.softmax_cross_entropy_with_integer_labels(z, np.array([0, 1, 2]))))
    )(z)
    self.assertTrue(np.isnan(grad[1:]).all())
    self.assertTrue(np.isfinite(grad[0]).all())

  @parameterized.parameters(5, 8192)  # the few-pass and the large-input path
  def test_ignored_row_with_a_nan_logit_reaches_no_other_derivative(self, classes):
    """An ignored row counts 0 whatever its logits: with a NaN one, forward mode of the batch's sum is
    still finite on every other row (its tangent was 0·NaN, which reached every direction of ``jacfwd``),
    and 0 on the ignored row; reverse mode is NaN only at that logit (its 0·NaN, as in PyTorch)."""
    rng = np.random.default_rng(5)
    z = rng.normal(size=(4, classes)).astype(np.float32)
    z[1, 2] = np.nan
    y = np.array([0, -100, 3, 1])
    total = lambda z: jnp.sum(xent_jax.softmax_cross_entropy_with_integer_labels(z, y, ignore_index=-100))
    kept = np.array([0, 2, 3])
    want = jax.grad(lambda z: jnp.sum(xent_jax.softmax_cross_entropy_with_integer_labels(z, y[kept])))(z[kept])
    grad = jax.jit(jax.grad(total))(z)
    np.testing.assert_allclose(grad[kept], want, rtol=1e-6, atol=1e-7)
    self.assertEqual(np.isnan(grad[1]).tolist(), [k == 2 for k in range(classes)])
    # Forward mode along three directions: one on a kept row's logit, one on the ignored row, one on both.
    directions = np.zeros((3, *z.shape), np.float32)
    directions[0, 0, 1] = directions[1, 1, 0] = 1
    directions[2, 2] = directions[2, 1] = 1
    jvps = jax.jit(jax.vmap(lambda d: jax.jvp(total, (z,), (d,))[1]))(directions)
    np.testing.assert_allclose(jvps, [want[0, 1], 0.0, np.sum(want[1])], rtol=1e-5, atol=1e-6)


class LibraryValuePathTest(parameterized.TestCase):
  """The soft-label loss alone, without a mask, from 2¹⁵ logits up (``xent_jax._fused._soft_value``).

  That path sums the common batch with no select or cap and sends a batch
  whose sum is not finite, or that holds a negative target, to the careful
  forward. Each batch below (8 × 4096) holds ordinary rows and at most one
  edge row; the loss alone must equal the float64 reference (and the limits
  on the edge row), and the value of value_and_grad, which is computed by the
  differentiated forward.
  """

  N, C = 8, 4096

  def _batch(self, dtype):
    rng = np.random.default_rng(3)
    z = (rng.normal(size=(self.N, self.C)) * 3).astype(dtype)
    z[1] = (rng.uniform(-1e4, 1e4, self.C)).astype(dtype)  # large logits: no cancellation at their scale
    p = rng.dirichlet(np.ones(self.C), self.N).astype(dtype)
    p[2] = 0
    p[2, 7] = 1  # a one-hot row
    return z, p

  # name: ({class: logit}, {class: target}, the rest of the row's targets (None: kept), its loss or None
  # for the float64 reference), all on row 0
  EDGES: ClassVar = {
    "ordinary": ({}, {}, None, None),
    "-inf logit, p = 0": ({5: -np.inf}, {5: 0.0}, None, None),
    "-inf logit, p > 0": ({5: -np.inf}, {}, None, np.inf),
    "+inf logit, its class only": ({5: np.inf}, {5: 1.0}, 0.0, 0.0),
    "+inf logit, spread target": ({5: np.inf}, {}, None, np.inf),
    "negative target": ({}, {5: -1e-3}, None, np.nan),
    "nan target": ({}, {5: np.nan}, None, np.nan),
  }

  @parameterized.product(edge=list(EDGES), dtype=["float32", "bfloat16"])
  def test_value_alone(self, edge, dtype):
    z, p = self._batch(np.float32)
    logits, targets, rest, row0 = self.EDGES[edge]
    if rest is not None:
      p[0] = rest
    for k, v in logits.items():
      z[0, k] = v
    for k, v in targets.items():
      p[0, k] = v
    z, p = jnp.asarray(z, dtype), jnp.asarray(p, dtype)
    assert not xent_jax._fused._small(z)
    value = jax.jit(xent_jax.softmax_cross_entropy)(z, p)
    want = ref.softmax_cross_entropy(np.asarray(z, np.float64), np.asarray(p, np.float64))
    if row0 is not None:
      want[0] = row0
    np.testing.assert_allclose(np.asarray(value, np.float64), want, rtol=2e-6, atol=0)
    differentiated = jax.value_and_grad(lambda z: jnp.sum(xent_jax.softmax_cross_entropy(z, p)))(z)[0]
    chex.assert_trees_all_close(jnp.sum(value), differentiated, rtol=1e-6, strict=True)

  def test_summed_path_from_the_library_size(self):
    """The loss alone takes ``_soft_value``'s summed path (a cond around the careful forward's, which
    has one of its own) from 2¹⁵ logits, and the few-pass path (no cond) below."""
    conds = lambda c: str(jax.make_jaxpr(xent_jax.softmax_cross_entropy)(jnp.zeros((8, c)), jnp.zeros((8, c))))
    assert xent_jax._fused._SMALL_SIZE == 8 * 4096
    assert (conds(4095).count("cond["), conds(4096).count("cond[")) == (0, 2)

  def test_sums_start_from_their_own_negative_zero(self):
    """The summed path's two sums start from -0.0 in a reduce that JAX keeps (not ``reduce_sum``, whose
    0.0 XLA merges with the caller's; see ``_fused._own_sum``), and a -0.0 target is a 0, not a negative
    one (the NaN check's min is -0.0 there)."""
    z, p = self._batch(np.float32)
    jaxpr = str(jax.make_jaxpr(lambda z, p: jnp.mean(xent_jax.softmax_cross_entropy(z, p)))(z, p))
    outer = jaxpr.split("cond[")[0]  # the summed path, before its cond
    assert (outer.count("reduce["), outer.count("reduce_sum[")) == (2, 0), outer
    assert outer.count("-0.0:f32[]") >= 2, outer
    p[3, :5] = -0.0
    want = ref.softmax_cross_entropy(z.astype(np.float64), p.astype(np.float64))
    np.testing.assert_allclose(np.asarray(jax.jit(xent_jax.softmax_cross_entropy)(z, p), np.float64), want, rtol=2e-6)

  @parameterized.parameters("float32", "bfloat16")
  def test_negative_target_from_4096_rows(self, dtype):
    """From 4096 rows XLA:CPU runs the row min of the targets inside the sum's library fusion; its √ of a
    negative min must still be NaN there (one NaN row, the others against float64)."""
    rng = np.random.default_rng(4)
    z = rng.normal(size=(4096, 8)).astype(np.float32)
    p = rng.dirichlet(np.ones(8), 4096).astype(np.float32)
    p[1000, 3] = -1e-3
    z, p = jnp.asarray(z, dtype), jnp.asarray(p, dtype)
    want = ref.softmax_cross_entropy(np.asarray(z, np.float64), np.asarray(p, np.float64))
    want[1000] = np.nan
    np.testing.assert_allclose(np.asarray(jax.jit(xent_jax.softmax_cross_entropy)(z, p), np.float64), want, rtol=2e-6)

  def test_value_alone_under_vmap(self):
    z, p = self._batch(np.float32)
    z2, p2 = z.copy(), p.copy()
    p2[0, 5] = -1e-3  # the second batch takes the careful branch, the first does not
    zs, ps = jnp.asarray(np.stack([z, z2])), jnp.asarray(np.stack([p, p2]))
    value = jax.vmap(xent_jax.softmax_cross_entropy)(zs, ps)
    want = ref.softmax_cross_entropy(np.asarray(zs, np.float64), np.asarray(ps, np.float64))
    want[1, 0] = np.nan
    np.testing.assert_allclose(np.asarray(value, np.float64), want, rtol=2e-6, atol=0)


@pytest.mark.parametrize("dtype, classes", [("int8", 200), ("uint8", 300), ("int16", 40000), ("uint16", 70000)])
def test_narrow_label_dtypes(dtype, classes):
  """8- and 16-bit labels with more classes than their dtype holds (C - 1 overflowed it: NaN for valid labels)."""
  rng = np.random.default_rng(5)
  z = rng.normal(size=(3, classes)).astype(np.float32)
  labels = np.array([0, 5, np.iinfo(dtype).max], dtype)
  loss = lambda z: xent_jax.softmax_cross_entropy_with_integer_labels(z, jnp.asarray(labels))
  value, grad = jax.jit(jax.value_and_grad(lambda z: jnp.sum(loss(z))))(z)
  want = ref.integer_cross_entropy(z, labels.astype(np.int64))
  np.testing.assert_allclose(np.asarray(jax.jit(loss)(z), np.float64), want, rtol=1e-6)
  np.testing.assert_allclose(float(value), want.sum(), rtol=1e-6)
  expected = ref.softmax(z)
  expected[np.arange(3), labels.astype(np.int64)] -= 1
  np.testing.assert_allclose(np.asarray(grad, np.float64), expected, rtol=1e-5, atol=1e-7)
  torch_mean = xent_jax.cross_entropy(z, jnp.asarray(labels))
  np.testing.assert_allclose(float(torch_mean), want.mean(), rtol=1e-6)
