"""jax.grad, jax.jacfwd and jax.jacrev held against the seed's closed forms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

import xent_jax
from xent_jax import closed_forms, info

import references as ref

AUTODIFF = {"jacfwd": jax.jacfwd, "jacrev": jax.jacrev}


def _diag_jacobian(jac, f, x):
  return jnp.diagonal(jac(f)(x))


class ClosedFormTest(chex.TestCase):
  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(20)
    self.z = (rng.normal(size=6) * 3).astype(np.float32)
    self.y = rng.random(6).astype(np.float32)
    self.p = rng.dirichlet(np.ones(6)).astype(np.float32)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("jacfwd", "jacrev")
  def test_sigmoid_derivative(self, mode):
    """Eq. 4.2.20: dσ/dz = σ(1 - σ)."""
    got = self.variant(lambda z: _diag_jacobian(AUTODIFF[mode], jax.nn.sigmoid, z))(self.z)
    s = 1 / (1 + np.exp(-self.z.astype(np.float64)))
    np.testing.assert_allclose(got, s * (1 - s), rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(got, closed_forms.sigmoid_derivative(self.z), atol=1e-7, strict=True)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("jacfwd", "jacrev")
  def test_softmax_jacobian(self, mode):
    """Eq. 4.2.26–4.2.28, 4.2.32: J = diag(p̂) - p̂p̂ᵀ."""
    got = self.variant(AUTODIFF[mode](jax.nn.softmax))(self.z)
    s = ref.softmax(self.z)
    np.testing.assert_allclose(got, np.diag(s) - np.outer(s, s), atol=1e-6)
    chex.assert_trees_all_close(got, closed_forms.softmax_jacobian(self.z), atol=1e-6, strict=True)

  def test_softmax_jacobian_is_positive_semidefinite(self):
    """Eq. 4.2.33: vᵀJv = Var_p̂(v) ≥ 0 — PSD, not negative semi-definite as the seed says."""
    jac = np.asarray(closed_forms.softmax_jacobian(self.z), np.float64)
    s = ref.softmax(self.z)
    np.testing.assert_allclose(jac.sum(0), 0, atol=1e-7)
    np.testing.assert_allclose(jac.sum(1), 0, atol=1e-7)
    eig = np.linalg.eigvalsh(jac)
    self.assertGreater(eig.min(), -1e-7)
    self.assertLess(abs(eig[0]), 1e-7)
    for v in np.random.default_rng(21).normal(size=(5, 6)):
      variance = np.sum(s * v**2) - np.sum(s * v) ** 2
      np.testing.assert_allclose(v @ jac @ v, variance, rtol=1e-5, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("jacfwd", "jacrev")
  def test_unfused_chain_gradient(self, mode):
    """Eq. 4.2.29–4.2.31 on the unfused reference, forward and reverse mode."""
    for p in (self.p, 2.5 * self.p, np.eye(6, dtype=np.float32)[2]):
      got = self.variant(AUTODIFF[mode](closed_forms.unfused_softmax_cross_entropy))(self.z, p)
      chex.assert_trees_all_close(got, closed_forms.softmax_cross_entropy_gradient(self.z, p), atol=1e-6, strict=True)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("jacfwd", "jacrev")
  def test_fused_gradient(self, mode):
    """Eq. 4.2.40 on the fused loss, forward and reverse mode."""
    for p in (self.p, 2.5 * self.p):
      got = self.variant(AUTODIFF[mode](xent_jax.softmax_cross_entropy))(self.z, p)
      chex.assert_trees_all_close(got, closed_forms.softmax_cross_entropy_gradient(self.z, p), atol=1e-6, strict=True)
      np.testing.assert_allclose(got, ref.softmax(self.z) * p.sum() - p, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("jacfwd", "jacrev")
  def test_sigmoid_bce_gradient(self, mode):
    """Eq. 4.2.22: ∂L/∂z = σ(z) - y."""
    got = self.variant(
      lambda z, y: _diag_jacobian(AUTODIFF[mode], lambda z: xent_jax.sigmoid_binary_cross_entropy(z, y), z)
    )(self.z, self.y)
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-self.z.astype(np.float64))) - self.y, atol=1e-6)
    chex.assert_trees_all_close(
      got, closed_forms.sigmoid_binary_cross_entropy_gradient(self.z, self.y), atol=1e-6, strict=True
    )

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("jacfwd", "jacrev")
  def test_bce_probability_gradient(self, mode):
    """Eq. 4.2.19: ∂L/∂p̂ = -(y/p̂ - (1-y)/(1-p̂))."""
    p_hat = jax.nn.sigmoid(self.z)
    got = self.variant(lambda q, y: _diag_jacobian(AUTODIFF[mode], lambda q: xent_jax.binary_cross_entropy(q, y), q))(
      p_hat, self.y
    )
    q64, y64 = np.asarray(p_hat, np.float64), self.y.astype(np.float64)
    np.testing.assert_allclose(got, -(y64 / q64 - (1 - y64) / (1 - q64)), rtol=2e-5)
    chex.assert_trees_all_close(got, closed_forms.binary_cross_entropy_gradient(p_hat, self.y), rtol=1e-5, strict=True)

  @chex.variants(with_jit=True, without_jit=True)
  def test_cross_entropy_probability_gradient(self):
    """Eq. 4.2.25: ∂L/∂p̂_i = -p_i/p̂_i."""
    q = ref.softmax(self.z).astype(np.float32)
    got = self.variant(jax.grad(info.cross_entropy, argnums=1))(self.p, q)
    np.testing.assert_allclose(got, -self.p.astype(np.float64) / q, rtol=1e-6)
    chex.assert_trees_all_close(got, closed_forms.cross_entropy_probability_gradient(q, self.p), rtol=1e-6, strict=True)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("jacfwd", "jacrev")
  def test_sigmoid_mse_gradient(self, mode):
    """Seed, after 4.2.22: ∂(σ(z)-y)²/∂z = 2(σ-y)σ(1-σ)."""
    got = self.variant(lambda z, y: _diag_jacobian(AUTODIFF[mode], lambda z: (jax.nn.sigmoid(z) - y) ** 2, z))(
      self.z, self.y
    )
    s = 1 / (1 + np.exp(-self.z.astype(np.float64)))
    np.testing.assert_allclose(got, 2 * (s - self.y) * s * (1 - s), atol=1e-6)
    chex.assert_trees_all_close(got, closed_forms.sigmoid_mse_gradient(self.z, self.y), atol=1e-6, strict=True)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("jacfwd", "jacrev")
  def test_mse_on_probabilities_gradient(self, mode):
    """Eq. 4.2.18: ∂/∂z Σ(p - p̂)² = 2J(p̂ - p)."""
    got = self.variant(AUTODIFF[mode](xent_jax.mse_on_probabilities))(self.z, self.p)
    s = ref.softmax(self.z)
    np.testing.assert_allclose(got, 2 * (np.diag(s) - np.outer(s, s)) @ (s - self.p), atol=1e-6)
    chex.assert_trees_all_close(got, closed_forms.mse_on_probabilities_gradient(self.z, self.p), atol=1e-6, strict=True)


def test_mse_gradient_vanishes_where_cross_entropy_does_not():
  """Eq. 4.2.18 vs 4.2.30: saturated and wrong, MSE's gradient is ~0, CE's is ~1."""
  target = np.array([1.0, 0.0, 0.0], np.float32)
  for scale in (10.0, 20.0, 40.0):
    z = np.array([0.0, scale, 0.0], np.float32)
    g_mse = np.abs(closed_forms.mse_on_probabilities_gradient(z, target)).max()
    g_ce = np.abs(closed_forms.softmax_cross_entropy_gradient(z, target)).max()
    assert g_mse < 8 * np.exp(-scale)  # 6e^{-s} to first order
    np.testing.assert_allclose(g_ce, 1.0, atol=1e-4)


def test_closed_forms_batch_over_leading_axes():
  z = np.random.default_rng(22).normal(size=(2, 3, 4)).astype(np.float32)
  jac = closed_forms.softmax_jacobian(z)
  assert jac.shape == (2, 3, 4, 4)
  chex.assert_trees_all_close(jac[1, 2], closed_forms.softmax_jacobian(z[1, 2]), strict=True)
  chex.assert_trees_all_close(jax.vmap(closed_forms.softmax_jacobian)(z), jac, strict=True)
