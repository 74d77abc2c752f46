"""InfoNCE and its relatives: reduction to softmax CE, attention link, MI bound."""

import inspect
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from jax.experimental import checkify

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
  {"mode": "in-batch", "in_batch": False},
  {"mode": "unpaired", "in_batch": False},
  {"mode": "paired", "in_batch": False},
  {"mode": "unpaired", "in_batch": True},
  {"mode": "paired", "in_batch": True},
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
    kwargs = {"negative_mode": "paired" if mode == "paired" else "unpaired", "in_batch_negatives": in_batch}

    def ours(q, k, n, tau):
      return jnp.mean(xent_jax.info_nce(q, k, n, temperature=tau, **kwargs))

    def theirs(q, k, n, tau):
      return jnp.mean(_optax_ce(*_reference_logits(q, k, n, mode, in_batch, tau)))

    tau = np.float32(0.3)
    value, grads = self.variant(jax.value_and_grad(ours, argnums=(0, 1, 3)))(self.q, self.k, n, tau)
    expected, expected_grads = jax.value_and_grad(theirs, argnums=(0, 1, 3))(self.q, self.k, n, tau)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    chex.assert_trees_all_close(grads, expected_grads, atol=2e-5, strict=True)
    logits, labels = _reference_logits(
      *(jnp.asarray(x, jnp.float32) if x is not None else None for x in (self.q, self.k, n)), mode, in_batch, 0.3
    )
    np.testing.assert_allclose(
      value, np.mean(ref.integer_cross_entropy(np.asarray(logits, np.float64), np.asarray(labels))), rtol=1e-5
    )

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

  @parameterized.parameters(1e-3, 0.005, 0.02)
  def test_small_temperature_is_used_as_given(self, tau):
    """No clamp unasked: 1/τ up to 1000 enters the loss and dL/dτ as it is."""
    k = np.roll(self.k, 1, axis=0)  # positives that are not the nearest keys: losses of order 1/τ
    loss = lambda t: jnp.sum(xent_jax.info_nce(self.q, k, temperature=t))
    value, grad = jax.value_and_grad(loss)(np.float32(tau))
    s = _unit(self.q.astype(np.float64)) @ _unit(k.astype(np.float64)).T
    np.testing.assert_allclose(value, np.sum(ref.integer_cross_entropy(s / tau, np.arange(B))), rtol=1e-5)
    p_hat = ref.softmax(s / tau)
    expected = np.sum(-(np.sum(p_hat * s, -1) - np.diag(s)) / tau**2)
    np.testing.assert_allclose(grad, expected, rtol=1e-4)

  def test_max_logit_scale_caps_only_when_asked(self):
    """CLIP's cap on the learned logit scale: 1/τ ≤ 100 with the keyword, gradient 0 where it holds."""
    k = np.roll(self.k, 1, axis=0)
    loss = lambda t, cap: jnp.sum(xent_jax.info_nce(self.q, k, temperature=t, max_logit_scale=cap))
    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (capped, g_capped), (free, _) = value_and_grad(np.float32(1e-4), 100.0), value_and_grad(np.float32(0.01), None)
    np.testing.assert_allclose(capped, free, rtol=1e-6)
    self.assertEqual(float(g_capped), 0.0)
    np.testing.assert_allclose(value_and_grad(np.float32(1e-4), None)[0], 100 * free, rtol=1e-2)  # L ≈ (s_max - s_+)/τ
    np.testing.assert_allclose(
      value_and_grad(np.float32(0.5), 100.0)[1], value_and_grad(np.float32(0.5), None)[1], rtol=1e-6
    )
    supcon = jax.jit(
      lambda t, cap: xent_jax.supervised_contrastive(self.q, np.arange(B) // 2, temperature=t, max_logit_scale=cap),
      static_argnums=1,
    )
    chex.assert_trees_all_close(supcon(np.float32(1e-4), 100.0), supcon(np.float32(0.01), None), rtol=1e-6)
    with self.assertRaisesRegex(ValueError, "`max_logit_scale`"):
      xent_jax.info_nce(self.q, self.k, max_logit_scale=0.0)

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
    np.testing.assert_allclose(
      loss, jnp.mean(xent_jax.info_nce(np.asarray(q, np.float32), np.asarray(k, np.float32))), rtol=2e-2
    )

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
    loss, grad = jax.value_and_grad(
      lambda e: jnp.sum(xent_jax.supervised_contrastive(e, self.labels, temperature=0.5))
    )(self.e)
    s = _unit(self.e.astype(np.float64)) @ _unit(self.e.astype(np.float64)).T / 0.5
    expected = []
    for i in range(B):
      others = [a for a in range(B) if a != i]
      positives = [p for p in others if self.labels[p] == self.labels[i]]
      lse = np.log(np.sum(np.exp(s[i, others])))
      expected.append(np.mean([lse - s[i, p] for p in positives]) if positives else 0.0)
    np.testing.assert_allclose(
      xent_jax.supervised_contrastive(self.e, self.labels, temperature=0.5), expected, rtol=1e-5
    )
    np.testing.assert_allclose(loss, np.sum(expected), rtol=1e-5)
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
        critic = (
          -((y[None, :, :] - rho * x[:, None, :]) ** 2).sum(-1) / (2 * (1 - rho**2)) + (y**2).sum(-1)[None, :] / 2
        )
        losses.append(
          xent_jax.softmax_cross_entropy_with_integer_labels(jnp.asarray(critic, jnp.float32), jnp.arange(n))
        )
      losses = np.concatenate(losses)
      bounds.append(float(xent_jax.mutual_information_lower_bound(losses.mean(), n)))
      slack.append(3 * losses.std() / np.sqrt(losses.size))  # the bound holds in expectation: 3 standard errors
    assert all(b < truth + s for b, s in zip(bounds, slack, strict=True)), (bounds, slack, truth)
    assert all(b2 > b1 for b1, b2 in itertools.pairwise(bounds)), bounds
    assert truth - bounds[-1] < 0.1, (bounds, truth)


def _ntxent_reference(e, labels, tau):
  """NT-Xent in float64 numpy, pair by pair, with optax's floor on the squared norms."""
  e = np.asarray(e, np.float64)
  u = e / np.sqrt(np.maximum(np.sum(e**2, -1, keepdims=True), np.finfo(np.float32).eps))
  s = u @ u.T / tau
  losses = []
  for i in range(len(e)):
    negatives = s[i, labels != labels[i]]
    for j in range(len(e)):
      if j != i and labels[j] == labels[i]:
        losses.append(np.logaddexp.reduce(np.append(negatives, s[i, j])) - s[i, j])
  return np.mean(losses)


TEMPERATURE_LOSSES = {
  "info_nce": lambda e, t: jnp.sum(xent_jax.info_nce(e, jnp.roll(e, 1, axis=1), temperature=t)),
  "supervised_contrastive": lambda e, t: jnp.sum(xent_jax.supervised_contrastive(e, jnp.arange(B) // 2, temperature=t)),
  "ntxent": lambda e, t: xent_jax.ntxent(e, jnp.arange(B) // 2, t),
}


class TemperatureTest(parameterized.TestCase):
  def setUp(self):
    super().setUp()
    self.e = np.random.default_rng(34).normal(size=(B, D)).astype(np.float32)

  @parameterized.parameters(*TEMPERATURE_LOSSES)
  def test_traced_nonpositive_or_nan_temperature_is_nan(self, name):
    loss = jax.jit(TEMPERATURE_LOSSES[name])
    grads = jax.jit(jax.grad(TEMPERATURE_LOSSES[name], argnums=(0, 1)))
    checked = checkify.checkify(loss, errors=checkify.float_checks)
    self.assertIsNone(checked(self.e, np.float32(0.1))[0].get())
    for tau in (0.0, -1.0, -0.005, np.nan):
      self.assertTrue(np.isnan(loss(self.e, np.float32(tau))), tau)
      self.assertTrue(all(np.isnan(g).all() for g in grads(self.e, np.float32(tau))), tau)
      error, _ = checked(self.e, np.float32(tau))
      with self.assertRaisesRegex(checkify.JaxRuntimeError, "nan generated"):
        error.throw()

  @parameterized.parameters(*TEMPERATURE_LOSSES)
  def test_static_nonpositive_temperature_raises(self, name):
    for tau in (0.0, -1, np.float32(-0.5), float("nan")):
      with self.assertRaisesRegex(ValueError, "`temperature`"):
        TEMPERATURE_LOSSES[name](self.e, tau)

  @parameterized.product(name=list(TEMPERATURE_LOSSES), tau=(0.005, 0.1, 2.0))
  def test_temperature_gradient_against_float64_finite_difference(self, name, tau):
    loss = TEMPERATURE_LOSSES[name]
    grad = jax.jit(jax.grad(loss, argnums=1))(self.e, np.float32(tau))
    with jax.enable_x64(True):
      f64 = jax.jit(lambda t: loss(jnp.asarray(self.e, jnp.float64), t))
      h = tau * 1e-5
      expected = (f64(tau + h) - f64(tau - h)) / (2 * h)
    np.testing.assert_allclose(grad, expected, rtol=2e-4)


# optax's ntxent on a grid: group patterns, temperatures down to 0.005 (1/τ = 200), float labels,
# and an embedding whose squared norm falls under optax's floor.
NTXENT_GRID = [
  {"labels": labels, "tau": tau, "tiny_row": tiny_row}
  for labels in ([0, 0, 1, 1, 1, 2], [0, 1, 0, 1, 0, 1], [3, 3, 3, 3, 0, 0])
  for tau in (0.005, 0.07, 1.0)
  for tiny_row in (False, True)
]


class NTXentOptaxTest(parameterized.TestCase):
  def test_signature_is_optax_s(self):
    ours = inspect.signature(xent_jax.ntxent).parameters
    theirs = inspect.signature(optax.losses.ntxent).parameters
    self.assertEqual(
      [(p.name, p.kind, p.default) for p in ours.values()], [(p.name, p.kind, p.default) for p in theirs.values()]
    )

  @parameterized.parameters(*NTXENT_GRID)
  def test_matches_optax(self, labels, tau, tiny_row):
    e = np.random.default_rng(35).normal(size=(6, D)).astype(np.float32)
    if tiny_row:
      e[2] *= 1e-5  # ‖e‖² ≈ 5e-10 < eps(float32): optax floors it
    for y in (np.asarray(labels, np.int32), np.asarray(labels, np.float32)):
      ours, g_ours = jax.value_and_grad(xent_jax.ntxent, argnums=(0, 2))(e, y, np.float32(tau))
      with jax.numpy_dtype_promotion("standard"):  # optax's ntxent mixes int and bool
        theirs, g_theirs = jax.value_and_grad(optax.losses.ntxent, argnums=(0, 2))(e, jnp.asarray(y), np.float32(tau))
      self.assertEqual((ours.shape, ours.dtype), (theirs.shape, theirs.dtype))
      np.testing.assert_allclose(ours, _ntxent_reference(e, np.asarray(labels), tau), rtol=2e-5)
      if not np.isfinite(theirs):
        # optax shifts by the row max of all pairs: at 1/τ = 200 a positive 200 below it underflows
        self.assertEqual((tau, labels), (0.005, [3, 3, 3, 3, 0, 0]))
        continue
      np.testing.assert_allclose(ours, theirs, rtol=2e-5)
      self.assertTrue(np.isfinite(g_ours[0]).all() and np.isfinite(g_ours[1]))
      finite = np.isfinite(g_theirs[0])  # optax's gradient can be NaN beside a finite value at 1/τ = 200
      scale = np.abs(g_theirs[0][finite]).max()
      np.testing.assert_allclose(g_ours[0][finite], g_theirs[0][finite], rtol=1e-4, atol=1e-5 * scale)
      if np.isfinite(g_theirs[1]):
        np.testing.assert_allclose(g_ours[1], g_theirs[1], rtol=1e-4)

  def test_default_temperature_is_optax_s(self):
    e = np.random.default_rng(36).normal(size=(6, D)).astype(np.float32)
    y = jnp.array([0, 0, 1, 1, 2, 2])
    with jax.numpy_dtype_promotion("standard"):
      np.testing.assert_allclose(xent_jax.ntxent(e, y), optax.losses.ntxent(e, y), rtol=2e-5)


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
