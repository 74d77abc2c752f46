"""Every cell of "never NaN where the mathematics is finite" for BCE, KL, MSE and info.*.

Each cell is an argument at the edge of the domain (z = ±inf, ±1e4, p̂ ∈ {0, 1},
targets 0, log-targets -inf) with the value and every partial derivative
written out in float64 numpy from the closed forms. Each cell runs in a batch
of two rows beside an ordinary row, and the Jacobians of the per-row losses
are taken in both autodiff modes: the cell's row holds the limits (±inf where
they are infinite), the cross entries are 0 (not 0·∞ = NaN). Sigmoid BCE is
checked to second order in all four compositions. A second part holds the
optax-named functions against optax itself on a grid of shapes, axes, masks
and dtypes.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import xent_jax
from xent_jax import info

INF = np.inf


def _sp(x):
  return np.logaddexp(0.0, x)


def _times(u, v):
  """u·v with 0·v = 0 (the convention the losses use for a zero weight)."""
  return 0.0 if u == 0 else u * v


def _log(x):
  with np.errstate(divide="ignore"):
    return np.log(x)


def _sigmoid(x):
  return 0.5 * (1 + np.tanh(x / 2))


# ---- closed forms: (value, partials) of one element / one row -------------------------------


def sigmoid_bce(z, y, w):
  """L = w y softplus(-z) + (1-y) softplus(z) (Eq. 4.2.11, 4.2.22)."""
  value = _times(w * y, _sp(-z)) + _times(1 - y, _sp(z))
  dz = (1 - y) * _sigmoid(z) - w * y * _sigmoid(-z)
  return value, (dz, _times(w, _sp(-z)) - _sp(z), _times(y, _sp(-z)))


def sigmoid_bce_hessian(z, y, w):
  s, t = _sigmoid(z), _sigmoid(-z)
  zz, zy, zw, yw = s * t * (w * y + 1 - y), -w * t - s, -y * t, _sp(-z)
  return np.array([[zz, zy, zw], [zy, 0.0, yw], [zw, yw, 0.0]])


def bce_probabilities(p, y):
  """L = -[y log p + (1-y) log(1-p)] (Eq. 4.2.11, 4.2.19)."""
  value = -(_times(y, _log(p)) + _times(1 - y, _log(1 - p)))
  ratio = lambda u, v: 0.0 if u == 0 else (u / v if v else INF)
  return value, (ratio(1 - y, 1 - p) - ratio(y, p), _log(1 - p) - _log(p))


def kl_row(lq, t):
  """Σ t (log t - log q); ∂/∂log q = -t, ∂/∂t = log t + 1 - log q with (log t + 1) := 0 at t = 0."""
  value = sum(_times(ti, _log(ti)) - _times(ti, li) for li, ti in zip(lq, t, strict=True))
  d_t = [(0.0 if ti == 0 else _log(ti) + 1) - li for li, ti in zip(lq, t, strict=True)]
  return value, (-np.asarray(t), np.asarray(d_t))


def kl_log_targets_row(lq, lt):
  """Σ e^lt (lt - lq); ∂/∂lq = -e^lt, ∂/∂lt = e^lt (lt - lq + 1), 0 at lt = -inf."""
  value = sum(0.0 if t == -INF else np.exp(t) * (t - q) for q, t in zip(lq, lt, strict=True))
  d_lt = [0.0 if t == -INF else np.exp(t) * (t - q + 1) for q, t in zip(lq, lt, strict=True)]
  return value, (-np.exp(lt), np.asarray(d_lt))


def mse_row(z, p):
  """Σ (p - p̂)², p̂ the softmax at its limit (mass shared by the +inf logits); ∂/∂z = 2J(p̂ - p)."""
  z, p = np.asarray(z), np.asarray(p)
  p_hat = (z == INF) / np.sum(z == INF) if np.any(z == INF) else np.exp(z - z.max()) / np.exp(z - z.max()).sum()
  jac = np.diag(p_hat) - np.outer(p_hat, p_hat)
  return np.sum((p - p_hat) ** 2), (2 * jac @ (p_hat - p), -2 * (p_hat - p))


def self_information_cell(p):
  return -_log(p), (-1 / p if p else -INF,)


def entropy_row(p):
  """-Σ p log p; ∂/∂p = -(log p + 1), 0 at p = 0 (the module's convention)."""
  return -sum(_times(x, _log(x)) for x in p), (np.array([0.0 if x == 0 else -(_log(x) + 1) for x in p]),)


def cross_entropy_row(p, q):
  """-Σ p log q; ∂/∂p = -log q, ∂/∂q = -p/q (0 where p = 0)."""
  value = -sum(_times(a, _log(b)) for a, b in zip(p, q, strict=True))
  return value, (
    -_log(np.asarray(q)),
    np.array([0.0 if a == 0 else (-a / b if b else -INF) for a, b in zip(p, q, strict=True)]),
  )


def info_kl_row(p, q):
  """Σ p log p - p log q; ∂/∂p = (log p + 1, 0 at p = 0) - log q, ∂/∂q = -p/q."""
  value = sum(_times(a, _log(a)) - _times(a, _log(b)) for a, b in zip(p, q, strict=True))
  d_p = [(0.0 if a == 0 else _log(a) + 1) - _log(b) for a, b in zip(p, q, strict=True)]
  return value, (np.asarray(d_p), cross_entropy_row(p, q)[1][1])


# ---- the cells: (family, id, arguments of the cell's row) ------------------------------------

FAMILIES = {
  # name: (loss on a batch of rows, closed form of one row, an ordinary row, per-row arguments are scalars?)
  "sigmoid_bce": (
    lambda z, y, w: xent_jax.sigmoid_binary_cross_entropy(z, y, pos_weight=w),
    sigmoid_bce,
    (0.5, 0.3, 1.5),
    True,
  ),
  "bce": (xent_jax.binary_cross_entropy, bce_probabilities, (0.4, 0.3), True),
  "kl": (xent_jax.kl_divergence, kl_row, ([np.log(0.5)] * 2, [0.25, 0.75]), False),
  "kl_log_targets": (
    xent_jax.kl_divergence_with_log_targets,
    kl_log_targets_row,
    ([np.log(0.5)] * 2, list(np.log([0.25, 0.75]))),
    False,
  ),
  "mse": (xent_jax.mse_on_probabilities, mse_row, ([0.0, 1.0, -1.0], [0.2, 0.5, 0.3]), False),
  "self_information": (info.self_information, self_information_cell, (0.4,), True),
  "entropy": (info.entropy, entropy_row, ([0.25, 0.75],), False),
  "cross_entropy": (info.cross_entropy, cross_entropy_row, ([0.25, 0.75], [0.5, 0.5]), False),
  "info_kl": (info.kl_divergence, info_kl_row, ([0.25, 0.75], [0.5, 0.5]), False),
}

L5, L25 = np.log(0.5), np.log(0.25)
CELLS = [
  # sigmoid BCE (z, y, w₊): the cells and every ±inf / ±1e4 corner
  ("sigmoid_bce", "z+inf-y1", (INF, 1.0, 1.0)),
  ("sigmoid_bce", "z+inf-y0", (INF, 0.0, 1.0)),
  ("sigmoid_bce", "z+inf-y0.3-w2", (INF, 0.3, 2.0)),
  ("sigmoid_bce", "z-inf-y0", (-INF, 0.0, 1.0)),  # ∂L/∂w₊ = 0 (was NaN)
  ("sigmoid_bce", "z-inf-y1", (-INF, 1.0, 1.0)),
  ("sigmoid_bce", "z-inf-y0.3-w0", (-INF, 0.3, 0.0)),
  ("sigmoid_bce", "z+1e4-y0", (1e4, 0.0, 1.0)),
  ("sigmoid_bce", "z+1e4-y1", (1e4, 1.0, 1.0)),
  ("sigmoid_bce", "z-1e4-y0", (-1e4, 0.0, 1.0)),
  ("sigmoid_bce", "z-1e4-y1", (-1e4, 1.0, 1.0)),
  ("sigmoid_bce", "z0.5-y0", (0.5, 0.0, 1.0)),  # ∂L/∂y at a hard label (was softplus(z) alone)
  ("sigmoid_bce", "z0.5-y1", (0.5, 1.0, 1.0)),
  # BCE on probabilities (p̂, y)
  ("bce", "p0-y0", (0.0, 0.0)),
  ("bce", "p0-y1", (0.0, 1.0)),
  ("bce", "p0-y0.3", (0.0, 0.3)),
  ("bce", "p1-y1", (1.0, 1.0)),
  ("bce", "p1-y0", (1.0, 0.0)),
  ("bce", "p0.3-y0", (0.3, 0.0)),  # ∂L/∂y at a hard label (was log(1 - p̂) alone)
  ("bce", "p0.3-y1", (0.3, 1.0)),
  # KL (log q, targets)
  ("kl", "t0-logq-inf", ([-INF, L5], [0.0, 1.0])),
  ("kl", "t>0-logq-inf", ([-INF, L5], [0.5, 0.5])),
  ("kl", "t0-logq-finite", ([L5, L5], [0.0, 1.0])),  # ∂/∂t = -log q (was 0)
  ("kl", "logq-1e4", ([-1e4, 0.0], [0.0, 1.0])),
  ("kl", "logq-1e4-t>0", ([-1e4, 0.0], [0.5, 0.5])),
  # KL with log targets (log q, log p)
  ("kl_log_targets", "logp-inf", ([L5, L5], [-INF, 0.0])),
  ("kl_log_targets", "logp-inf-logq-inf", ([-INF, 0.0], [-INF, 0.0])),  # ∂/∂log p undefined: 0, documented
  ("kl_log_targets", "logq-inf", ([-INF, 0.0], [L5, L5])),
  ("kl_log_targets", "logq-1e4", ([-1e4, 0.0], [L5, L5])),
  ("kl_log_targets", "logp-1e4", ([L5, L5], [-1e4, 0.0])),
  # MSE on probabilities (logits, targets)
  ("mse", "one-z+inf", ([INF, 0.0, 0.0], [1.0, 0.0, 0.0])),
  ("mse", "one-z+inf-wrong", ([INF, 0.0, 0.0], [0.0, 1.0, 0.0])),
  ("mse", "two-z+inf", ([INF, INF, 0.0], [1.0, 0.0, 0.0])),
  ("mse", "z-inf", ([-INF, 0.0, 0.0], [1.0, 0.0, 0.0])),
  ("mse", "z+1e4", ([1e4, 0.0, 0.0], [0.0, 1.0, 0.0])),
  ("mse", "z-1e4", ([-1e4, 0.0, 0.0], [0.0, 0.5, 0.5])),
  # information measures
  ("self_information", "p0", (0.0,)),
  ("self_information", "p1", (1.0,)),
  ("entropy", "p0", ([0.0, 1.0],)),
  ("cross_entropy", "p0-q0", ([0.0, 1.0], [0.0, 1.0])),
  ("cross_entropy", "q0", ([0.5, 0.5], [0.0, 1.0])),
  ("cross_entropy", "p0", ([0.0, 1.0], [0.5, 0.5])),  # ∂/∂p = -log q (was 0)
  ("info_kl", "p0-q0", ([0.0, 1.0], [0.0, 1.0])),
  ("info_kl", "q0", ([0.5, 0.5], [0.0, 1.0])),
  ("info_kl", "p0", ([0.0, 1.0], [0.5, 0.5])),
]

_compiled = {}


def _jitted(family):
  """value, the Jacobians of the per-row losses in both modes, jitted once per family."""
  if family not in _compiled:
    fn = FAMILIES[family][0]
    argnums = tuple(range(len(FAMILIES[family][2])))
    _compiled[family] = (jax.jit(fn), jax.jit(jax.jacrev(fn, argnums)), jax.jit(jax.jacfwd(fn, argnums)))
  return _compiled[family]


@pytest.mark.parametrize("family, cell, args", CELLS, ids=[f"{f}-{c}" for f, c, _ in CELLS])
def test_value_and_gradient_are_the_limits(family, cell, args):
  _, closed_form, ordinary, _ = FAMILIES[family]
  batch = [np.asarray([a, o], np.float32) for a, o in zip(args, ordinary, strict=True)]
  value, partials = closed_form(*args)
  value_ordinary, partials_ordinary = closed_form(*ordinary)
  value_fn, jacrev, jacfwd = _jitted(family)
  np.testing.assert_allclose(value_fn(*batch), [value, value_ordinary], rtol=2e-6, atol=1e-30)
  for mode, jacobians in (("rev", jacrev(*batch)), ("fwd", jacfwd(*batch))):
    for jac, d_cell, d_ordinary in zip(jacobians, partials, partials_ordinary, strict=True):
      jac = np.asarray(jac, np.float64)  # [row out, row in (, class)]
      np.testing.assert_allclose(jac[0, 0], d_cell, rtol=2e-6, atol=1e-6, err_msg=f"{mode}: the cell's partials")
      np.testing.assert_allclose(jac[1, 1], d_ordinary, rtol=2e-6, atol=1e-6, err_msg=f"{mode}: the ordinary row")
      np.testing.assert_array_equal(
        jac[0, 1], np.zeros_like(jac[0, 1]), err_msg=f"{mode}: cross entries must be 0, not NaN"
      )
      np.testing.assert_array_equal(
        jac[1, 0], np.zeros_like(jac[1, 0]), err_msg=f"{mode}: cross entries must be 0, not NaN"
      )


def test_cells_cover_every_family():
  assert {f for f, _, _ in CELLS} == set(FAMILIES)


def test_undefined_cells_are_documented():
  """The one cell with no limit (mse, every included logit -inf) is NaN; its docstring says so."""
  assert np.isnan(xent_jax.mse_on_probabilities(np.full(3, -np.inf, np.float32), np.array([1.0, 0.0, 0.0], np.float32)))
  assert "undefined" in xent_jax.mse_on_probabilities.__doc__
  assert "undefined" in xent_jax.kl_divergence_with_log_targets.__doc__


_SIGMOID_CELLS = [args for family, _, args in CELLS if family == "sigmoid_bce"]
_A = (0, 1, 2)
_COMPOSITIONS = {
  "fwd-over-rev": lambda f: jax.jacfwd(jax.grad(f, _A), _A),
  "rev-over-rev": lambda f: jax.jacrev(jax.grad(f, _A), _A),
  "fwd-over-fwd": lambda f: jax.jacfwd(jax.jacfwd(f, _A), _A),
  "rev-over-fwd": lambda f: jax.jacrev(jax.jacfwd(f, _A), _A),
}


@pytest.mark.parametrize("mode", list(_COMPOSITIONS))
def test_sigmoid_bce_second_order_limits(mode):
  """All nine second partials in (z, y, w₊) at every cell, in each composition of the two modes."""
  bce = lambda z, y, w: xent_jax.sigmoid_binary_cross_entropy(z, y, pos_weight=w)
  hessian = jax.jit(_COMPOSITIONS[mode](bce))
  for args in _SIGMOID_CELLS:
    got = np.asarray(hessian(*(np.float32(a) for a in args)), np.float64)
    np.testing.assert_allclose(got, sigmoid_bce_hessian(*args), rtol=2e-6, atol=1e-6, err_msg=str(args))


# ---- optax's semantics to the letter, against optax itself --------------------------------

BCE_SHAPES = [((2, 3), (2, 3)), ((2, 3), (3,)), ((2, 1), (1, 3)), ((3,), (2, 3)), ((), (4,))]
BCE_GRID = [
  {"shapes": s, "labels": ("float32", "int32", "bool")[i % 3]} for i, s in enumerate(BCE_SHAPES + BCE_SHAPES[:1])
]
KL_AXES = [-1, 1, (1, 2), (2, 1), (-1, -2), (0, 2), None]
KL_GRID = [
  {"axis": a, "where": (None, "mask")[i % 2], "broadcast": i % 3 == 0} for i, a in enumerate(KL_AXES + KL_AXES[:1])
]


def _optax(fn, *args, **kwargs):
  """optax's function under numpy's promotion rules, which it relies on to broadcast."""
  with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
    return fn(*args, **kwargs)


class OptaxSemanticsTest(parameterized.TestCase):
  @parameterized.parameters(*BCE_GRID)
  def test_sigmoid_binary_cross_entropy(self, shapes, labels):
    rng = np.random.default_rng(40)
    z = (3 * rng.normal(size=shapes[0])).astype(np.float32)
    y = (
      (rng.random(shapes[1]) > 0.5).astype(labels) if labels != "float32" else rng.random(shapes[1]).astype(np.float32)
    )
    ours, g_ours = jax.jit(jax.value_and_grad(lambda z: jnp.sum(xent_jax.sigmoid_binary_cross_entropy(z, y))))(z)
    theirs, g_theirs = _optax(
      jax.jit(jax.value_and_grad(lambda z: jnp.sum(optax.losses.sigmoid_binary_cross_entropy(z, y)))), z
    )
    self.assertEqual(
      xent_jax.sigmoid_binary_cross_entropy(z, y).shape, _optax(optax.losses.sigmoid_binary_cross_entropy, z, y).shape
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    np.testing.assert_allclose(g_ours, g_theirs, rtol=1e-6, atol=1e-7)

  @parameterized.parameters(jnp.bfloat16, jnp.float16)
  def test_sigmoid_binary_cross_entropy_16_bit(self, dtype):
    """optax computes in the 16-bit dtype; we compute in float32 and return float32 losses."""
    rng = np.random.default_rng(41)
    z, y = jnp.asarray(rng.normal(size=(4, 5)), dtype), rng.random((4, 5)).astype(np.float32)
    ours, grad = jax.value_and_grad(lambda z: jnp.sum(xent_jax.sigmoid_binary_cross_entropy(z, y)))(z)
    self.assertEqual((ours.dtype, grad.dtype), (jnp.float32, dtype))
    theirs = _optax(optax.losses.sigmoid_binary_cross_entropy, z.astype(np.float32), y)
    np.testing.assert_allclose(ours, jnp.sum(theirs), rtol=1e-6)

  @parameterized.parameters(*KL_GRID)
  def test_kl_divergences(self, axis, where, broadcast):
    rng = np.random.default_rng(42)
    lq = np.log(rng.dirichlet(np.ones(4), size=(2, 3))).astype(np.float32)
    p = rng.dirichlet(np.ones(4), size=(3,) if broadcast else (2, 3)).astype(np.float32)
    mask = None if where is None else rng.random((2, 3, 4)) > 0.3
    for ours_fn, optax_fn, target in [
      (xent_jax.kl_divergence, optax.losses.kl_divergence, p),
      (xent_jax.kl_divergence_with_log_targets, optax.losses.kl_divergence_with_log_targets, np.log(p)),
    ]:
      loss = lambda fn: lambda a, b: jnp.sum(fn(a, b, axis=axis, where=mask) ** 2)
      ours, g_ours = jax.jit(jax.value_and_grad(loss(ours_fn), argnums=(0, 1)))(lq, target)
      theirs, g_theirs = _optax(jax.jit(jax.value_and_grad(loss(optax_fn), argnums=(0, 1))), lq, target)
      shape = _optax(optax_fn, lq, target, axis=axis, where=mask).shape
      self.assertEqual(ours_fn(lq, target, axis=axis, where=mask).shape, shape)
      np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-7)
      chex.assert_trees_all_close(g_ours, g_theirs, rtol=2e-5, atol=1e-6)
