"""``jax.export`` with a symbolic batch: the fused losses trace without knowing their size.

The kernels pick a path by the logits' size (``_fused._small``); a symbolic size takes the
larger path, which is right at every size. Each exported function is called on a batch of
6 and compared with the float64 references.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import xent_jax

import references

B, C = 6, 10
(BATCH,) = export.symbolic_shape("b")


def _spec(shape, dtype):
  return jax.ShapeDtypeStruct(shape, dtype)


@pytest.fixture
def data():
  rng = np.random.default_rng(3)
  z = (3 * rng.standard_normal((B, C))).astype(np.float32)
  p = rng.random((B, C)).astype(np.float32)
  p /= p.sum(-1, keepdims=True)
  labels = rng.integers(0, C, B).astype(np.int32)
  where = rng.random((B, C)) > 0.3
  where[np.arange(B), labels] = True
  return z, p, labels, where


def _exported(fn, *specs):
  return export.export(jax.jit(fn))(*specs).call


def _summed_grad(fn):
  return jax.grad(lambda *args: jnp.sum(fn(*args)))


@pytest.mark.parametrize("masked", [False, True])
def test_integer_labels(data, masked):
  z, _, labels, where = data
  mask = where if masked else None

  def loss(z, labels, mask):
    return xent_jax.softmax_cross_entropy_with_integer_labels(z, labels, where=mask)

  specs = (_spec((BATCH, C), jnp.float32), _spec((BATCH,), jnp.int32), _spec((BATCH, C), jnp.bool_) if masked else None)
  value = _exported(loss, *specs)(z, labels, mask)
  grad = _exported(_summed_grad(loss), *specs)(z, labels, mask)
  np.testing.assert_allclose(value, references.integer_cross_entropy(z, labels, mask), rtol=1e-5, atol=1e-6)
  onehot = np.eye(C)[labels]
  np.testing.assert_allclose(grad, references.softmax_cross_entropy_grad(z, onehot, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_soft_labels(data, dtype):
  z, p, _, _ = data
  z16, p16 = jnp.asarray(z, dtype), jnp.asarray(p, dtype)
  specs = (_spec((BATCH, C), dtype), _spec((BATCH, C), dtype))
  value = _exported(xent_jax.softmax_cross_entropy, *specs)(z16, p16)
  grad = _exported(_summed_grad(xent_jax.softmax_cross_entropy), *specs)(z16, p16)
  assert value.dtype == jnp.float32 and grad.dtype == dtype
  want = references.softmax_cross_entropy(np.asarray(z16, np.float64), np.asarray(p16, np.float64))
  want_grad = references.softmax_cross_entropy_grad(np.asarray(z16, np.float64), np.asarray(p16, np.float64))
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(value, want, rtol=tol, atol=tol)
  np.testing.assert_allclose(np.asarray(grad, np.float64), want_grad, rtol=tol, atol=tol)


def test_bad_rows_stay_nan(data):
  """The larger path's checks hold under export: a label out of range and a negative target give NaN."""
  z, p, labels, _ = data
  labels, p = labels.copy(), p.copy()
  labels[1], p[2, 0] = C, -0.5
  logits = _spec((BATCH, C), jnp.float32)
  int_loss = _exported(xent_jax.softmax_cross_entropy_with_integer_labels, logits, _spec((BATCH,), jnp.int32))
  soft_loss = _exported(xent_jax.softmax_cross_entropy, logits, _spec((BATCH, C), jnp.float32))
  np.testing.assert_array_equal(np.isnan(int_loss(z, labels)), np.arange(B) == 1)
  np.testing.assert_array_equal(np.isnan(soft_loss(z, p)), np.arange(B) == 2)


def test_linear_cross_entropy_asks_for_a_known_batch():
  def loss(h, w, labels):
    return xent_jax.linear_cross_entropy(h, w, labels)

  specs = (_spec((BATCH, 4), jnp.float32), _spec((4, C), jnp.float32), _spec((BATCH,), jnp.int32))
  with pytest.raises(ValueError, match="known number of tokens"):
    export.export(jax.jit(loss))(*specs)
