"""Property tests over extreme inputs: ±1e4, ±inf masks, subnormals, one class, all masked."""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import xent_jax
from xent_jax import info

import references as ref

N, C = 3, 5
EPS32 = float(np.finfo(np.float32).eps)
SUBNORMAL = float(np.finfo(np.float32).smallest_subnormal)

settings.register_profile("xent", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("xent")

extreme_floats = st.one_of(
  st.floats(-1e4, 1e4, width=32),
  st.sampled_from([0.0, SUBNORMAL, -SUBNORMAL, 1e4, -1e4, 88.7, -103.9]),
)
logit_arrays = hnp.arrays(np.float32, (N, C), elements=extreme_floats)
inf_masks = hnp.arrays(np.bool_, (N, C), elements=st.booleans())
label_arrays = hnp.arrays(np.int32, (N,), elements=st.integers(0, C - 1))


@jax.jit
def int_value_and_grad(z, labels, where):
  return jax.value_and_grad(
    lambda z: jnp.sum(xent_jax.softmax_cross_entropy_with_integer_labels(z, labels, where=where))
  )(z)


@jax.jit
def soft_value_and_grad(z, p, where):
  return jax.value_and_grad(lambda z: jnp.sum(xent_jax.softmax_cross_entropy(z, p, where=where)))(z)


def _tolerance(z):
  finite = np.abs(z[np.isfinite(z)])
  return 8 * EPS32 * (1.0 + (finite.max() if finite.size else 0.0)) * C


@given(logit_arrays, inf_masks, label_arrays)
def test_integer_labels_finite_and_exact_with_minus_inf_elsewhere(z, minus_inf, labels):
  z = np.where(minus_inf, -np.inf, z).astype(np.float32)
  z[np.arange(N), labels] = np.nan_to_num(z[np.arange(N), labels], neginf=0.0)
  all_true = np.ones((N, C), bool)
  loss, grad = int_value_and_grad(z, labels, all_true)
  expected = ref.integer_cross_entropy(z, labels).sum()
  assert np.isfinite(loss) and np.isfinite(grad).all()
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=_tolerance(z))
  np.testing.assert_allclose(grad, ref.softmax_cross_entropy_grad(z, np.eye(C)[labels]), atol=1e-5)
  np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-5)


@given(logit_arrays, inf_masks, hnp.arrays(np.float32, (N, C), elements=st.floats(0, 1, width=32)))
def test_soft_labels_finite_and_bounded_below_by_entropy(z, minus_inf, weights):
  z = np.where(minus_inf, -np.inf, z).astype(np.float32)
  z[:, 0] = np.nan_to_num(z[:, 0], neginf=0.0)
  weights = np.where(minus_inf, 0.0, weights)
  weights[:, 0] += 1e-3
  p = (weights / weights.sum(-1, keepdims=True)).astype(np.float32)
  loss, grad = soft_value_and_grad(z, p, np.ones((N, C), bool))
  assert np.isfinite(loss) and np.isfinite(grad).all()
  np.testing.assert_allclose(loss, ref.softmax_cross_entropy(z, p).sum(), rtol=1e-5, atol=_tolerance(z))
  np.testing.assert_allclose(grad, ref.softmax_cross_entropy_grad(z, p), atol=1e-5)
  assert loss >= float(np.sum(info.entropy(p))) - _tolerance(z) - 1e-5


@given(logit_arrays, inf_masks, label_arrays)
def test_where_masks_including_fully_masked_rows(z, where, labels):
  where[0] = False
  _, grad = int_value_and_grad(z, labels, where)
  kept = where[np.arange(N), labels]
  assert np.isfinite(grad).all()
  np.testing.assert_array_equal(grad[0], 0.0)
  off_label = ~where & (np.arange(C) != labels[:, None])
  np.testing.assert_array_equal(grad[off_label], 0.0)
  per_example = xent_jax.softmax_cross_entropy_with_integer_labels(z, labels, where=where)
  assert per_example[0] == 0.0
  assert np.isfinite(per_example[kept]).all()
  np.testing.assert_allclose(per_example, ref.integer_cross_entropy(z, labels, where), rtol=1e-5, atol=_tolerance(z))


@given(st.floats(-1e4, 1e4, width=32) | st.sampled_from([np.inf, -np.inf]))
def test_single_class_is_zero(z):
  loss, grad = int_value_and_grad(np.full((N, 1), z, np.float32), np.zeros(N, np.int32), np.ones((N, 1), bool))
  if np.isfinite(z):
    assert loss == 0.0 and (grad == 0.0).all()


sigmoid_bce_grad = jax.jit(jax.value_and_grad(lambda z, y: jnp.sum(xent_jax.sigmoid_binary_cross_entropy(z, y))))


@given(
  hnp.arrays(np.float32, (8,), elements=extreme_floats | st.sampled_from([np.inf, -np.inf])),
  hnp.arrays(np.float32, (8,), elements=st.floats(0, 1, width=32)),
)
def test_sigmoid_bce_finite_whenever_the_labels_agree_with_infinities(z, y):
  y = np.where(z == np.inf, 1.0, np.where(z == -np.inf, 0.0, y)).astype(np.float32)
  loss, grad = sigmoid_bce_grad(z, y)
  assert np.isfinite(loss) and np.isfinite(grad).all()
  finite = np.isfinite(z)
  np.testing.assert_allclose(
    xent_jax.sigmoid_binary_cross_entropy(z, y)[finite], ref.sigmoid_bce(z[finite], y[finite]), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(grad, 1 / (1 + np.exp(-z.astype(np.float64))) - y, atol=1e-6)


distributions = hnp.arrays(np.float32, (2, 4), elements=st.floats(0, 1e4, width=32) | st.just(SUBNORMAL)).filter(
  lambda w: (w.sum(-1) > 0).all()
)


@functools.partial(jax.jit, static_argnums=2)
def _entropies(p, q, lam):
  mix = lam * p + (1 - lam) * q
  return info.entropy(p), info.entropy(q), info.entropy(mix), info.kl_divergence(p, q), info.kl_divergence(q, p)


@given(distributions, distributions)
def test_entropy_bounds_gibbs_and_concavity(wp, wq):
  p = (wp / wp.sum(-1, keepdims=True)).astype(np.float32)
  q = (wq / wq.sum(-1, keepdims=True)).astype(np.float32)
  h_p, h_q, h_mix, kl_pq, kl_qp = _entropies(p, q, 0.3)
  tol = 1e-5
  assert (h_p >= -tol).all() and (h_p <= np.log(4) + tol).all()
  assert (h_mix >= 0.3 * h_p + 0.7 * h_q - tol).all()
  assert (kl_pq >= -tol).all() and (kl_qp >= -tol).all()
