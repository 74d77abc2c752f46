"""InfoNCE and its relatives: reduction to softmax CE, attention link, MI bound."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import xent_jax

import references as ref

B, M, D = 6, 4, 5


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _optax_ce(logits, labels):
  """An independent composition: optax's loss over the scaled scores."""
  return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)


def _reference_logits(q, k, n, mode, in_batch, tau):
  """The scaled scores and labels of each InfoNCE mode, written out in jnp."""
  q, k = q / jnp.linalg.norm(q, axis=-1, keepdims=True), k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  if n is None:
    return q @ k.T / tau, jnp.arange(B)
  n = n / jnp.linalg.norm(n, axis=-1, keepdims=True)
  neg = q @ n.T if mode == "unpaired" else jnp.einsum("id,imd->im", q, n)
  if in_batch:
    return jnp.concatenate([q @ k.T, neg], -1) / tau, jnp.arange(B)
  return jnp.concatenate([jnp.sum(q * k, -1, keepdims=True), neg], -1) / tau, jnp.zeros(B, jnp.int32)


MODES = [
    dict(mode="in-batch", in_batch=False),
    dict(mode="unpaired", in_batch=False),
    dict(mode="paired", in_batch=False),
    dict(mode="unpaired", in_batch=True),
    dict(mode="paired", in_batch=True),
]


class InfoNCETest(chex.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(30)
    self.q = rng.normal(size=(B, D)).astype(np.float32)
    self.k = (self.q + 0.5 * rng.normal(size=(B, D))).astype(np.float32)
    self.n_unpaired = rng.normal(size=(M, D)).astype(np.float32)
    self.n_paired = rng.normal(size=(B, M, D)).astype(np.float32)

  def _negatives(self, mode):
    return {"in-batch": None, "unpaired": self.n_unpaired, "paired": self.n_paired}[mode]

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODES)
  def test_equals_integer_label_cross_entropy_on_scaled_scores(self, mode, in_batch):
    n = self._negatives(mode)
    kwargs = dict(negative_mode="paired" if mode == "paired" else "unpaired", in_batch_negatives=in_batch)

    def ours(q, k, n, tau):
      return jnp.mean(xent_jax.info_nce(q, k, n, temperature=tau, **kwargs))

    def theirs(q, k, n, tau):
      return jnp.mean(_optax_ce(*_reference_logits(q, k, n, mode, in_batch, tau)))

    tau = np.float32(0.3)
    value, grads = self.variant(jax.value_and_grad(ours, argnums=(0, 1, 3)))(self.q, self.k, n, tau)
    expected, expected_grads = jax.value_and_grad(theirs, argnums=(0, 1, 3))(self.q, self.k, n, tau)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    chex.assert_trees_all_close(grads, expected_grads, atol=2e-5, strict=True)
    logits, labels = _reference_logits(*(jnp.asarray(x, jnp.float32) if x is not None else None for x in (self.q, self.k, n)), mode, in_batch, 0.3)
    np.testing.assert_allclose(value, np.mean(ref.integer_cross_entropy(np.asarray(logits, np.float64), np.asarray(labels))), rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_symmetric_is_the_mean_of_both_directions(self):
    both = self.variant(lambda q, k: xent_jax.info_nce(q, k, symmetric=True))(self.q, self.k)
    forward = xent_jax.info_nce(self.q, self.k)
    backward = xent_jax.info_nce(self.k, self.q)
    chex.assert_trees_all_close(jnp.mean(both), (jnp.mean(forward) + jnp.mean(backward)) / 2, atol=1e-6, strict=True)

  @chex.variants(with_jit=True, without_jit=True)
  def test_temperature_gradient_closed_form(self):
    """dL/dτ = -(E_p̂[s] - s_+)/τ² for L = logsumexp(s/τ) - s_+/τ."""
    tau = np.float32(0.5)
    grad = self.variant(jax.grad(lambda t: jnp.sum(xent_jax.info_nce(self.q, self.k, temperature=t))))(tau)
    s = _unit(self.q.astype(np.float64)) @ _unit(self.k.astype(np.float64)).T
    p_hat = ref.softmax(s / tau)
    expected = np.sum(-(np.sum(p_hat * s, -1) - np.diag(s)) / tau**2)
    np.testing.assert_allclose(grad, expected, rtol=1e-5)

  def test_learned_temperature_is_clamped_at_scale_100(self):
    loss = lambda t: jnp.sum(xent_jax.info_nce(self.q, self.k, temperature=t))
    np.testing.assert_allclose(loss(np.float32(1e-4)), loss(np.float32(0.01)), rtol=1e-6)
    self.assertEqual(float(jax.grad(loss)(np.float32(1e-4))), 0.0)

  def test_attention_identity(self):
    """info_nce(q, k, τ = √d, normalize=False) = -log of the attention weight on the positive."""
    weights = xent_jax.attention_weights(self.q, self.k)
    loss = xent_jax.info_nce(self.q, self.k, temperature=math.sqrt(D), normalize=False)
    np.testing.assert_allclose(loss, -np.log(np.diag(np.asarray(weights, np.float64))), rtol=1e-5)

  def test_attention_weights_match_dot_product_attention(self):
    weights = xent_jax.attention_weights(self.q, self.k)
    np.testing.assert_allclose(np.sum(weights, -1), 1.0, rtol=1e-6)
    v = self.n_paired[:, 0]
    dpa = jax.nn.dot_product_attention(self.q[None, :, None], self.k[None, :, None], v[None, :, None])[0, :, 0]
    np.testing.assert_allclose(weights @ v, dpa, atol=1e-6)
    s = self.q.astype(np.float64) @ self.k.astype(np.float64).T / math.sqrt(D)
    np.testing.assert_allclose(weights, ref.softmax(s), atol=1e-6)

  @parameterized.parameters(jnp.bfloat16, jnp.float16)
  def test_low_precision_embeddings(self, dtype):
    q, k = jnp.asarray(self.q, dtype), jnp.asarray(self.k, dtype)
    loss, grads = jax.value_and_grad(lambda q, k: jnp.mean(xent_jax.info_nce(q, k)), argnums=(0, 1))(q, k)
    self.assertEqual(loss.dtype, jnp.float32)
    self.assertEqual(grads[0].dtype, dtype)
    np.testing.assert_allclose(loss, jnp.mean(xent_jax.info_nce(np.asarray(q, np.float32), np.asarray(k, np.float32))), rtol=2e-2)

  def test_vmap_over_batches_of_batches(self):
    qs = np.stack([self.q, self.k])
    mapped = jax.vmap(xent_jax.info_nce)(qs, qs[::-1])
    chex.assert_trees_all_close(mapped[0], xent_jax.info_nce(self.q, self.k), strict=True)

  def test_float64(self):
    with jax.enable_x64(True):
      loss = xent_jax.info_nce(self.q.astype(np.float64), self.k.astype(np.float64), temperature=0.3)
    s = _unit(self.q.astype(np.float64)) @ _unit(self.k.astype(np.float64)).T / 0.3
    np.testing.assert_allclose(loss, ref.integer_cross_entropy(s, np.arange(B)), rtol=1e-12)


class RelativesTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(31)
    self.e = rng.normal(size=(B, D)).astype(np.float32)
    self.labels = np.array([0, 0, 1, 1, 1, 2])

  def test_ntxent_matches_optax(self):
    ours, g_ours = jax.value_and_grad(xent_jax.ntxent)(self.e, self.labels)
    with jax.numpy_dtype_promotion("standard"):  # optax's ntxent mixes int and bool
      theirs, g_theirs = jax.value_and_grad(optax.losses.ntxent)(self.e, self.labels)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    np.testing.assert_allclose(g_ours, g_theirs, atol=1e-5)

  def test_ntxent_without_positives_is_zero_not_nan(self):
    labels = np.arange(B)
    with jax.numpy_dtype_promotion("standard"):
      self.assertTrue(np.isnan(optax.losses.ntxent(self.e, labels)))
    loss, grad = jax.value_and_grad(xent_jax.ntxent)(self.e, labels)
    self.assertEqual(float(loss), 0.0)
    self.assertTrue(np.isfinite(grad).all())

  def test_supervised_contrastive_reference(self):
    loss, grad = jax.value_and_grad(lambda e: jnp.sum(xent_jax.supervised_contrastive(e, self.labels, temperature=0.5)))(self.e)
    s = _unit(self.e.astype(np.float64)) @ _unit(self.e.astype(np.float64)).T / 0.5
    expected = []
    for i in range(B):
      others = [a for a in range(B) if a != i]
      positives = [p for p in others if self.labels[p] == self.labels[i]]
      lse = np.log(np.sum(np.exp(s[i, others])))
      expected.append(np.mean([lse - s[i, p] for p in positives]) if positives else 0.0)
    np.testing.assert_allclose(xent_jax.supervised_contrastive(self.e, self.labels, temperature=0.5), expected, rtol=1e-5)
    self.assertEqual(float(xent_jax.supervised_contrastive(self.e, self.labels)[5]), 0.0)  # no positive
    self.assertTrue(np.isfinite(grad).all())

  def test_sigmoid_contrastive_reference_and_learnable_parameters(self):
    q, k = self.e, np.roll(self.e, 1, axis=1)
    loss, grads = jax.value_and_grad(
        lambda t, b: jnp.mean(xent_jax.sigmoid_contrastive(q, k, logit_scale=jnp.exp(t), logit_bias=b)), argnums=(0, 1)
    )(np.float32(np.log(10.0)), np.float32(-10.0))
    z = 10.0 * (_unit(q.astype(np.float64)) @ _unit(k.astype(np.float64)).T) - 10.0
    sign = 2 * np.eye(B) - 1
    np.testing.assert_allclose(loss, np.mean(np.sum(np.logaddexp(0, -sign * z), -1)), rtol=1e-5)
    self.assertTrue(all(np.isfinite(g) for g in grads))

  def test_mutual_information_bound_on_correlated_gaussians(self):
    """log N - L stays below I = -(d/2) log(1 - ρ²) and tightens as N grows."""
    rho, d = 0.8, 2
    truth = -d / 2 * np.log(1 - rho**2)
    rng = np.random.default_rng(32)
    bounds, slack = [], []
    for n in (4, 16, 64, 512):
      losses = []
      for _ in range(4):
        x = rng.normal(size=(n, d))
        y = rho * x + np.sqrt(1 - rho**2) * rng.normal(size=(n, d))
        # the optimal critic log p(y|x)/p(y), up to terms in x alone
        critic = -((y[None, :, :] - rho * x[:, None, :]) ** 2).sum(-1) / (2 * (1 - rho**2)) + (y**2).sum(-1)[None, :] / 2
        losses.append(xent_jax.softmax_cross_entropy_with_integer_labels(jnp.asarray(critic, jnp.float32), jnp.arange(n)))
      losses = np.concatenate(losses)
      bounds.append(float(xent_jax.mutual_information_lower_bound(losses.mean(), n)))
      slack.append(3 * losses.std() / np.sqrt(losses.size))  # the bound holds in expectation: 3 standard errors
    assert all(b < truth + s for b, s in zip(bounds, slack)), (bounds, slack, truth)
    assert all(b2 > b1 for b1, b2 in zip(bounds, bounds[1:])), bounds
    assert truth - bounds[-1] < 0.1, (bounds, truth)


RELATIVES = {
    "ntxent": lambda e, y: xent_jax.ntxent(e, y),
    "supervised_contrastive": lambda e, y: xent_jax.supervised_contrastive(e, y),
    "sigmoid_contrastive": lambda e, y: xent_jax.sigmoid_contrastive(e, jnp.roll(e, 1, axis=1)),
    "attention_weights": lambda e, y: xent_jax.attention_weights(e, jnp.roll(e, 1, axis=0)),
}


@pytest.mark.parametrize("name", list(RELATIVES))
def test_relatives_under_jit_and_vmap(name):
  rng = np.random.default_rng(33)
  e = rng.normal(size=(3, B, D)).astype(np.float32)
  y = np.array([[0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], [3, 3, 3, 0, 0, 1]])
  fn = RELATIVES[name]
  eager = np.stack([fn(e[i], y[i]) for i in range(3)])
  chex.assert_trees_all_close(jax.jit(fn)(e[0], y[0]), eager[0], atol=1e-6)
  chex.assert_trees_all_close(jax.vmap(fn)(e, y), eager, atol=1e-6)
