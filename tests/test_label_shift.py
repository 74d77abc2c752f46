"""The label-shift shortcut keeps p̂ to float32 precision for rows with a large Σ exp(z - z_c).

The integer-label kernel shifts a row by its label's logit z_c while
s = Σ exp(z - z_c) ≤ 2⁶⁴ (``xent_jax._fused._MAX_LABEL_SHIFTED_SUM``) and by
the row max otherwise (Eq. 4.2.35), and forms p̂ = exp(z - z_c)·(1/s). Written
as exp((z - z_c) - log s), as it was before issue 15, every p̂ would carry the
rounding of log s, about ulp(log s)/2 relative (1e-6 and more for s above
2³²); with the bound raised past 2¹²⁶, 1/s is subnormal, flushed to 0 by
XLA:CPU, and p̂ = 0. Each row below is its own call (``vmap``, so each takes
its own branch) with s from just above 2³² up to 2¹²⁷·⁵ (near float32's
overflow), and three large classes (p̂ ≈ 0.55, 0.28, 0.16) whose gradient
entries must match float64 to 2e-7 relative. The bound itself is tested by class weights
of 1e-18 on rows just above it, whose w_c/s would flush to 0 under the label
shift once the bound is loosened past about 2⁶⁷. The shortcut is the path of
large inputs; these 8-class rows would take the few-pass path, which shifts
by the max, so the tests run on the other (``_paths.LargePath``).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np

import xent_jax

import _paths

# The three large classes relative to the largest (float32-exact offsets).
_TOP = np.float32([0.0, -0.6931, -1.25])
_OTHERS = np.float32([-2.75, -0.5, -4.5, 1.0])


def _rows() -> tuple[np.ndarray, np.ndarray]:
  """Logits with label 0 at z = 0 and log₂ Σ exp(z - z_c) from 32.02 to 127.5 (40 rows up to 2⁴⁰)."""
  bits = np.concatenate([np.linspace(32.02, 40.0, 40), np.linspace(40.5, 127.5, 24)])
  top = bits * np.log(2.0) - np.log(np.exp(_TOP.astype(np.float64)).sum())
  z = np.zeros((bits.size, 1 + _TOP.size + _OTHERS.size), np.float32)
  z[:, 1:4] = top.astype(np.float32)[:, None] + _TOP
  z[:, 4:] = _OTHERS
  return z, np.zeros(bits.size, np.int32)


def _reference_grad(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """p̂ - onehot in float64."""
  z = z.astype(np.float64)
  p = np.exp(z - z.max(axis=-1, keepdims=True))
  p /= p.sum(axis=-1, keepdims=True)
  return p - np.eye(z.shape[-1])[labels]


def _row_loss_and_grad(z: jax.Array, label: jax.Array) -> tuple[jax.Array, jax.Array]:
  return jax.value_and_grad(
    lambda z: jnp.sum(xent_jax.softmax_cross_entropy_with_integer_labels(z[None], label[None]))
  )(z)


class LabelShiftBoundTest(_paths.LargePath, chex.TestCase):
  def test_rows_straddle_the_bound(self):
    z, labels = _rows()
    # A row's call takes the label shift: its cond (the few-pass path has none).
    assert "cond[" in str(jax.make_jaxpr(_row_loss_and_grad)(jnp.asarray(z[0]), jnp.asarray(labels[0])))
    log2_sum = np.log2(np.exp(z.astype(np.float64) - z[:, :1]).sum(axis=-1))
    assert 32 < log2_sum.min() < 32.1 and log2_sum.max() > 127

  @chex.variants(with_jit=True, without_jit=True)
  def test_rows_above_the_bound_keep_float32_precision(self):
    z, labels = _rows()
    loss, grad = self.variant(jax.vmap(_row_loss_and_grad))(jnp.asarray(z), jnp.asarray(labels))
    z64 = z.astype(np.float64)
    np.testing.assert_allclose(np.asarray(loss, np.float64), np.log(np.exp(z64 - z64[:, :1]).sum(axis=-1)), rtol=2e-7)
    grad, expected = np.asarray(grad, np.float64), _reference_grad(z, labels)
    large = slice(1, 1 + _TOP.size)
    np.testing.assert_array_less(0.1, expected[:, large])
    np.testing.assert_allclose(grad[:, large], expected[:, large], rtol=2e-7, atol=0)
    np.testing.assert_allclose(grad, expected, rtol=0, atol=2e-7)

  @chex.variants(with_jit=True)
  def test_small_class_weights_just_above_the_bound_keep_their_gradient(self):
    """The bound 2⁶⁴ itself: w_c·(1/s) must stay a normal number (``_label_shifted``'s docstring).

    Rows with s from just above 2⁶⁴ to 2⁷² and class weights of 1e-18 take the max shift; with
    the bound loosened they would take the label shift, where w_c/s ≤ 1e-18·2⁻⁶⁷ is subnormal,
    flushed to 0 by XLA:CPU, and their gradients 0.
    """
    bits = np.linspace(64.05, 72.0, 16)
    z = np.zeros((bits.size, 1 + _TOP.size + _OTHERS.size), np.float32)
    z[:, 1:4] = (bits * np.log(2.0) - np.log(np.exp(_TOP.astype(np.float64)).sum())).astype(np.float32)[:, None] + _TOP
    z[:, 4:] = _OTHERS
    labels = np.zeros(bits.size, np.int32)
    weights = np.full(z.shape[-1], 1e-18, np.float32)

    def row_grad(z, label):
      loss = lambda z: jnp.sum(
        xent_jax.softmax_cross_entropy_with_integer_labels(z[None], label[None], class_weights=weights)
      )
      return jax.grad(loss)(z)

    grad = np.asarray(self.variant(jax.vmap(row_grad))(jnp.asarray(z), jnp.asarray(labels)), np.float64)
    expected = 1e-18 * _reference_grad(z, labels)
    large = slice(1, 1 + _TOP.size)
    np.testing.assert_array_less(1e-19, expected[:, large])
    np.testing.assert_allclose(grad[:, large], expected[:, large], rtol=1e-6)
