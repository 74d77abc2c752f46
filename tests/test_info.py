"""Information measures against scipy in float64 and the seed's identities."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from scipy import special, stats

from xent_jax import info

BASES = (None, 2, 10, 3.5, 0.5)


def _ln(base):
  return 1.0 if base is None else np.log(base)


class InfoTest(chex.TestCase):
  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(10)
    self.p = rng.dirichlet(np.ones(6) * 0.5, size=5)
    self.q = rng.dirichlet(np.ones(6), size=5)
    self.p[0, :2] = 0.0
    self.p[0] /= self.p[0].sum()
    self.p32, self.q32 = self.p.astype(np.float32), self.q.astype(np.float32)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*[{"base": b} for b in BASES])
  def test_self_information(self, base):
    got = self.variant(lambda p: info.self_information(p, base=base))(self.p32)
    with np.errstate(divide="ignore"):
      expected = -np.log(self.p32.astype(np.float64)) / _ln(base)
    np.testing.assert_allclose(got, expected, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*[{"base": b} for b in BASES])
  def test_entropy_matches_scipy(self, base):
    got = self.variant(lambda p: info.entropy(p, base=base))(self.p32)
    np.testing.assert_allclose(got, stats.entropy(self.p32.astype(np.float64), base=base, axis=-1), rtol=2e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*[{"base": b} for b in BASES])
  def test_kl_matches_rel_entr(self, base):
    got = self.variant(lambda p, q: info.kl_divergence(p, q, base=base))(self.p32, self.q32)
    expected = special.rel_entr(self.p32.astype(np.float64), self.q32.astype(np.float64)).sum(-1) / _ln(base)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*[{"base": b} for b in BASES])
  def test_cross_entropy_is_entropy_plus_kl(self, base):
    """Eq. 4.2.7: H(P, Q) = H(P) + KL(P‖Q), and against scipy."""
    h_pq = self.variant(lambda p, q: info.cross_entropy(p, q, base=base))(self.p32, self.q32)
    expected = -special.xlogy(self.p32.astype(np.float64), self.q32.astype(np.float64)).sum(-1) / _ln(base)
    np.testing.assert_allclose(h_pq, expected, rtol=2e-6)
    decomposed = info.entropy(self.p32, base=base) + info.kl_divergence(self.p32, self.q32, base=base)
    np.testing.assert_allclose(h_pq, decomposed, rtol=2e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_infinities_and_zeros(self):
    p = np.array([0.5, 0.5, 0.0], np.float32)
    q = np.array([1.0, 0.0, 0.0], np.float32)
    kl = self.variant(info.kl_divergence)(p, q)
    ce = self.variant(info.cross_entropy)(p, q)
    self.assertEqual(float(kl), np.inf)
    self.assertEqual(float(ce), np.inf)
    self.assertEqual(float(self.variant(info.kl_divergence)(q, p)), np.log(2.0).astype(np.float32))
    self.assertEqual(float(self.variant(info.entropy)(q)), 0.0)
    self.assertEqual(float(self.variant(info.self_information)(np.float32(0.0))), np.inf)

  @chex.variants(with_jit=True, without_jit=True)
  def test_negative_probability_is_nan(self):
    p = np.array([[-0.1, 1.1], [0.5, 0.5]], np.float32)
    q = np.array([[0.5, 0.5], [0.5, 0.5]], np.float32)
    for fn in (
      info.entropy,
      lambda p: info.cross_entropy(p, q),
      lambda p: info.kl_divergence(p, q),
      lambda p: info.cross_entropy(q, p),
    ):
      out = self.variant(fn)(p)
      np.testing.assert_array_equal(np.isnan(out), [True, False])

  @chex.variants(with_jit=True, without_jit=True)
  def test_gradients_at_zero_probabilities(self):
    """∂H/∂p_i = 0 at p_i = 0 (the p·log p convention); KL's ∂/∂p_i = -log q_i there, +inf at q_i = 0."""
    p = np.array([0.0, 0.0, 0.3, 0.7], np.float32)
    q = np.array([0.0, 0.5, 0.25, 0.25], np.float32)
    g_h = self.variant(jax.grad(info.entropy))(p)
    g_p, g_q = self.variant(jax.grad(info.kl_divergence, argnums=(0, 1)))(p, q)
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    np.testing.assert_allclose(g_h, [0.0, 0.0, *(-np.log(p64[2:]) - 1)], rtol=1e-6)
    np.testing.assert_allclose(g_p, [np.inf, -np.log(0.5), *(np.log(p64[2:] / q64[2:]) + 1)], rtol=1e-6)
    np.testing.assert_allclose(g_q, [0.0, 0.0, *(-p64[2:] / q64[2:])], rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_axis_and_where(self):
    p = self.p32.reshape(5, 2, 3)
    p = p / p.sum(axis=(1, 2), keepdims=True)
    got = self.variant(lambda p: info.entropy(p, axis=(1, 2)))(p)
    np.testing.assert_allclose(got, stats.entropy(p.reshape(5, 6).astype(np.float64), axis=-1), rtol=2e-6)
    where = np.arange(6) < 4
    got = self.variant(lambda p: info.entropy(p, where=where))(self.p32)
    np.testing.assert_allclose(got, -special.xlogy(self.p32, self.p32)[:, :4].sum(-1), rtol=2e-6)


def test_vmap_matches_batched():
  rng = np.random.default_rng(11)
  p, q = (rng.dirichlet(np.ones(4), size=3).astype(np.float32) for _ in range(2))
  for fn in (info.cross_entropy, info.kl_divergence):
    chex.assert_trees_all_close(jax.vmap(fn)(p, q), fn(p, q), strict=True)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_computed_in_float32(dtype):
  p = jnp.asarray([0.25, 0.75], dtype)
  assert info.entropy(p).dtype == jnp.float32
  assert jax.grad(info.entropy)(p).dtype == dtype


def test_float64_with_x64():
  p = np.array([1e-300, 1.0 - 1e-16, 0.0])
  with jax.enable_x64(True):
    got = info.entropy(jnp.asarray(p))
    assert got.dtype == jnp.float64
  np.testing.assert_allclose(got, special.entr(p).sum(), rtol=1e-12)
