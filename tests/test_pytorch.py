"""PyTorch semantics: `cross_entropy`, the integer-label options, `pos_weight`.

The reference is PyTorch's documented formulas in float64 numpy
(`references.torch_cross_entropy`), on a grid of options.
"""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xent_jax

import references as ref

N, C, D = 5, 4, 3
RNG = np.random.default_rng(7)
LOGITS = (RNG.normal(size=(N, C, D)) * 2).astype(np.float32)  # PyTorch layout (N, C, d1): axis=1
INDEX = RNG.integers(0, C, size=(N, D))
INDEX_IGNORED = np.where(RNG.random((N, D)) < 0.3, -100, INDEX)
PROBS = np.moveaxis(RNG.dirichlet(np.ones(C), size=(N, D)), -1, 1).astype(np.float32)
WEIGHT = np.array([0.5, 2.0, 1.0, 3.0], np.float32)
UPSTREAM = RNG.uniform(0.5, 2.0, size=(N, D)).astype(np.float32)  # a non-uniform cotangent for "none"

GRID = [
  (target, weight, reduction, smoothing, extra)
  for target, weight, reduction, smoothing, extra in itertools.product(
    ("index", "index_ignored", "probs"), (False, True), ("none", "mean", "sum"), (0.0, 0.15), (False, True)
  )
]


def _case(target, weight, extra):
  """Logits, target and axis for one grid point: (N, C) or the (N, C, d1) layout."""
  t = {"index": INDEX, "index_ignored": INDEX_IGNORED, "probs": PROBS}[target]
  if extra:
    return LOGITS, t, 1
  return LOGITS[..., 0], t[..., 0], -1


def _flat(z, t, axis):
  """The reference's (rows, C) layout."""
  if axis == -1:
    return z, t
  zf = np.moveaxis(z, 1, -1).reshape(-1, C)
  tf = np.moveaxis(t, 1, -1).reshape(-1, C) if t.dtype.kind == "f" else t.reshape(-1)
  return zf, tf


_cross_entropy = jax.jit(
  xent_jax.cross_entropy, static_argnames=("ignore_index", "reduction", "label_smoothing", "axis")
)


@pytest.mark.parametrize("target, weight, reduction, smoothing, extra", GRID)
def test_cross_entropy_matches_pytorch_formulas(target, weight, reduction, smoothing, extra):
  z, t, axis = _case(target, weight, extra)
  w = WEIGHT if weight else None
  upstream = UPSTREAM if extra else UPSTREAM[:, 0]

  def objective(z):
    out = _cross_entropy(z, t, weight=w, reduction=reduction, label_smoothing=smoothing, axis=axis)
    return jnp.sum(out * upstream) if reduction == "none" else out

  value, grad = jax.value_and_grad(objective)(z)
  zf, tf = _flat(z, t, axis)
  want, want_grad = ref.torch_cross_entropy(zf, tf, w, -100, reduction, smoothing)
  if reduction == "none":
    want = np.sum(want * upstream.reshape(-1))
    want_grad = want_grad * upstream.reshape(-1, 1)
  if axis == 1:
    want_grad = np.moveaxis(want_grad.reshape(N, D, C), -1, 1)
  np.testing.assert_allclose(value, want, rtol=2e-6, atol=1e-6)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


def test_cross_entropy_per_example_shape_and_dtype():
  out = jax.jit(lambda z: xent_jax.cross_entropy(z, INDEX, reduction="none", axis=1))(LOGITS.astype(jnp.bfloat16))
  chex.assert_shape(out, (N, D))
  chex.assert_type(out, jnp.float32)
  grad = jax.jit(jax.grad(lambda z: xent_jax.cross_entropy(z, INDEX, axis=1)))(LOGITS.astype(jnp.bfloat16))
  chex.assert_type(grad, jnp.bfloat16)


def test_mean_over_nothing_is_zero_not_nan():
  """Every target ignored: PyTorch gives NaN (0/0); we give loss 0 and gradient 0."""
  ignored = np.full(N, -100)
  value, grad = jax.jit(jax.value_and_grad(xent_jax.cross_entropy))(LOGITS[..., 0], ignored)
  assert value == 0.0
  np.testing.assert_array_equal(grad, 0.0)


def test_unbatched_input():
  """PyTorch's unbatched form: logits (C,), target a scalar."""
  value = xent_jax.cross_entropy(LOGITS[0, :, 0], INDEX[0, 0])
  want, _ = ref.torch_cross_entropy(LOGITS[:1, :, 0], INDEX[:1, 0])
  np.testing.assert_allclose(value, want, rtol=1e-6)


class IntegerOptionsTest(chex.TestCase):
  """Keyword-only options of softmax_cross_entropy_with_integer_labels, per example."""

  def setUp(self):
    super().setUp()
    self.z = LOGITS[..., 0]
    self.labels = INDEX[:, 0]

  @chex.variants(with_jit=True, without_jit=True)
  def test_weights_smoothing_ignore_per_example(self):
    labels = np.where(np.arange(N) == 2, -1, self.labels)
    upstream = UPSTREAM[:, 0]

    def objective(z, w):
      per = xent_jax.softmax_cross_entropy_with_integer_labels(
        z, labels, class_weights=w, ignore_index=-1, label_smoothing=0.2
      )
      return jnp.sum(per * upstream), per

    (_, per), (gz, gw) = self.variant(jax.value_and_grad(objective, argnums=(0, 1), has_aux=True))(self.z, WEIGHT)
    want, want_grad = ref.torch_cross_entropy(self.z, labels, WEIGHT, -1, "none", 0.2)
    np.testing.assert_allclose(per, want, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(gz, want_grad * upstream[:, None], rtol=1e-5, atol=1e-6)
    # ∂L/∂w_i = Σ_n u_n [(1-ε) 1{i=y_n} nll_{n,y_n} + (ε/C) nll_{n,i}], ignored rows left out.
    nll = -ref.log_softmax(self.z)
    kept = labels != -1
    y = np.where(kept, labels, 0)
    per_class = 0.8 * np.eye(C)[y] * nll[np.arange(N), y][:, None] + 0.2 / C * nll
    np.testing.assert_allclose(gw, np.sum((upstream * kept)[:, None] * per_class, 0), rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_z_loss(self):
    zeta = 1e-2
    fn = lambda z: xent_jax.softmax_cross_entropy_with_integer_labels(z, self.labels, z_loss=zeta)
    per, vjp = jax.vjp(self.variant(fn), self.z)
    lse = np.log(np.sum(np.exp(self.z.astype(np.float64)), -1))
    np.testing.assert_allclose(per, ref.integer_cross_entropy(self.z, self.labels) + zeta * lse**2, rtol=2e-6)
    (grad,) = vjp(jnp.asarray(UPSTREAM[:, 0]))
    p = ref.softmax(self.z)
    want = (p * (1 + 2 * zeta * lse[:, None]) - np.eye(C)[self.labels]) * UPSTREAM[:, :1]
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)

  def test_smoothing_with_where_keeps_masked_classes_at_zero(self):
    """ε/K on the K allowed classes: a -inf masked class keeps target 0 and the loss finite."""
    where = np.array([[True, True, False, True]])  # (1, C): a class mask (a rank-1 where would mask rows, as in optax)
    z = self.z.copy()
    z[:, 2] = -np.inf
    labels = np.array([0, 1, 3, 0, 1])
    loss_fn = lambda z: jnp.sum(
      xent_jax.softmax_cross_entropy_with_integer_labels(z, labels, where=where, label_smoothing=0.3)
    )
    value, grad = jax.value_and_grad(loss_fn)(z)
    q = 0.7 * np.eye(C)[labels] + 0.3 / 3 * where
    finite = np.where(where, z, 0.0)
    np.testing.assert_allclose(value, ref.softmax_cross_entropy(finite, q, where).sum(), rtol=1e-6)
    np.testing.assert_allclose(grad, ref.softmax_cross_entropy_grad(finite, q, where), atol=1e-6)

  def test_hessian_with_options_is_total_mass_times_jacobian(self):
    """∂²L/∂z² = (Σq) (diag(p̂) - p̂p̂ᵀ) for the smoothed, weighted target q."""
    z, label = self.z[0], self.labels[0]
    loss = lambda z: xent_jax.softmax_cross_entropy_with_integer_labels(
      z, label, class_weights=WEIGHT, label_smoothing=0.1
    )
    h = jax.jit(jax.hessian(loss))(z)
    mass = 0.9 * WEIGHT[label] + 0.1 / C * WEIGHT.sum()
    p = ref.softmax(z)
    np.testing.assert_allclose(h, mass * (np.diag(p) - np.outer(p, p)), atol=1e-6)

  def test_options_off_is_the_plain_loss(self):
    plain = xent_jax.softmax_cross_entropy_with_integer_labels(self.z, self.labels)
    ones = xent_jax.softmax_cross_entropy_with_integer_labels(self.z, self.labels, class_weights=np.ones(C, np.float32))
    chex.assert_trees_all_close(plain, ones, strict=True)


@pytest.mark.parametrize("pos_weight", [np.float32(3.0), np.array([0.5, 2.0, 1.0, 3.0], np.float32)])
def test_pos_weight_matches_pytorch(pos_weight):
  """binary_cross_entropy_with_logits: -[w₊ y log σ(z) + (1-y) log(1-σ(z))], w₊ per class."""
  z = LOGITS[..., 0]
  y = RNG.uniform(size=z.shape).astype(np.float32)
  value, grad = jax.value_and_grad(
    lambda z: jnp.sum(xent_jax.sigmoid_binary_cross_entropy(z, y, pos_weight=pos_weight))
  )(z)
  z64, y64, w64 = z.astype(np.float64), y.astype(np.float64), np.asarray(pos_weight, np.float64)
  sig = 1 / (1 + np.exp(-z64))
  want = -(w64 * y64 * np.log(sig) + (1 - y64) * np.log1p(-sig))
  np.testing.assert_allclose(value, want.sum(), rtol=1e-6)
  np.testing.assert_allclose(grad, sig * (w64 * y64 + 1 - y64) - w64 * y64, atol=1e-6)


def test_pos_weight_zero_at_infinite_logit_is_finite():
  z, y = jnp.array([-jnp.inf, jnp.inf]), jnp.array([1.0, 1.0])
  value, grad = jax.value_and_grad(
    lambda z: jnp.sum(xent_jax.sigmoid_binary_cross_entropy(z, y, pos_weight=jnp.float32(0.0)))
  )(z)
  assert value == 0.0
  np.testing.assert_array_equal(grad, 0.0)


def test_cross_entropy_under_vmap():
  """vmap over a leading axis equals the batched call, for class indices and probabilities."""
  for target in (INDEX_IGNORED, PROBS):
    fn = lambda z, t: xent_jax.cross_entropy(z, t, weight=WEIGHT, label_smoothing=0.1, axis=0)
    mapped = jax.jit(jax.vmap(fn))(LOGITS, target)
    want = np.array(
      [
        ref.torch_cross_entropy(*_flat(LOGITS[i : i + 1], target[i : i + 1], 1), WEIGHT, -100, "mean", 0.1)[0]
        for i in range(N)
      ]
    )
    np.testing.assert_allclose(mapped, want, rtol=2e-6, atol=1e-6)
