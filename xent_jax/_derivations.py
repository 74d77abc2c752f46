"""The derivation registry: every equation of seed section 4.2, checked two ways.

Each :class:`Check` names the seed equations it covers, states the claim in one
line, and computes it twice independently (autodiff against a closed form, one
side of an identity against the other, a float64 numpy reference, or a
property over seeded random and extreme samples). It returns the largest error
and the tolerance it is held to.

Errors are measured as ``max |a - b| / (1 + |b|)`` (absolute below 1, relative
above), with matching infinities counting as equal. Tolerances are a number of
units in the last place (``ulps × eps(dtype)``), chosen per check from the
length of the computation (a sum over C terms costs up to C ulps) and its
conditioning; they are never widened to make a check pass. The optimisation
rows (Eq. 4.2.44–4.2.46 and the bias-only model) are held to the optimiser's
stopping accuracy instead, stated in the check.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import optax
from jax.typing import ArrayLike, DTypeLike

from xent_jax import _classification as losses
from xent_jax import _closed_forms as cf
from xent_jax import _contrastive as contrastive
from xent_jax import _info as info
from xent_jax import _linear

C = 8  # classes
N = 16  # examples


@dataclasses.dataclass(frozen=True)
class CheckResult:
  """One row of the derivation report."""

  equation: str
  claim: str
  dtype: str
  max_error: float
  tolerance: float
  passed: bool
  note: str = ""


# A check's computation: (rng, dtype) -> (max_error, tolerance).
CheckFn = Callable[[np.random.Generator, DTypeLike], tuple[float, float]]


@dataclasses.dataclass(frozen=True)
class Check:
  """A registered check: ``run(rng, dtype)`` returns ``(max_error, tolerance)``."""

  equation: str
  claim: str
  run: CheckFn
  note: str = ""

  def numbers(self) -> set[int]:
    """The equation numbers 4.2.k this check covers (empty for announced 4.4 rows)."""
    found: set[int] = set()
    for lo, hi in re.findall(r"4\.2\.(\d+)(?:–4\.2\.(\d+))?", self.equation):
      found.update(range(int(lo), int(hi or lo) + 1))
    return found


def error(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
  """max |a - b| / (1 + |b|), where equal infinities agree and any other non-finite mismatch is inf."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  a, b = np.broadcast_arrays(a, b)
  same = (a == b) | (np.isnan(a) & np.isnan(b))
  finite = np.isfinite(a) & np.isfinite(b)
  if np.any(~same & ~finite):
    return math.inf
  if not finite.any():
    return 0.0
  return float(np.max(np.abs(a[finite] - b[finite]) / (1 + np.abs(b[finite]))))


def violation(x: npt.ArrayLike) -> float:
  """How far an inequality ``x >= 0`` is broken (0 when it holds)."""
  return float(np.max(np.maximum(-np.asarray(x, np.float64), 0.0)))


def ulps(dtype: DTypeLike, n: float) -> float:
  return float(n * jnp.finfo(dtype).eps)


def _simplex(rng: np.random.Generator, shape: tuple[int, ...], dtype: DTypeLike, zeros: bool = True) -> jax.Array:
  w = rng.gamma(0.5, size=shape)
  if zeros:
    w[..., 0] = 0.0
  return jnp.asarray(w / w.sum(-1, keepdims=True), dtype)


def _logits(rng: np.random.Generator, shape: tuple[int, ...], dtype: DTypeLike, scale: float = 3.0) -> jax.Array:
  return jnp.asarray(rng.normal(size=shape) * scale, dtype)


def _f64(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
  return np.asarray(x, np.float64)


def _np_log_softmax(z: npt.ArrayLike) -> npt.NDArray[np.float64]:
  x = _f64(z)
  # numpy types a reduction with keepdims as Any, hence the annotations.
  shifted: npt.NDArray[np.float64] = x - x.max(-1, keepdims=True)
  log_s: npt.NDArray[np.float64] = np.log(np.exp(shifted).sum(-1, keepdims=True))
  return shifted - log_s


def _np_nll(z: npt.ArrayLike, labels: npt.ArrayLike) -> npt.NDArray[np.float64]:
  """-log softmax(z)[n, labels[n]] in float64, one per row."""
  return -np.take_along_axis(_np_log_softmax(z), np.asarray(labels)[:, None], axis=-1)[:, 0]


def _np_xlogy(x: npt.ArrayLike, y: npt.ArrayLike) -> npt.NDArray[np.float64]:
  x, y = _f64(x), _f64(y)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(x == 0, 0.0, x * np.log(np.where(x == 0, 1.0, y)))


REGISTRY: list[Check] = []


def check(equation: str, claim: str, note: str = "") -> Callable[[CheckFn], CheckFn]:
  def register(fn: CheckFn) -> CheckFn:
    REGISTRY.append(Check(equation, claim, fn, note))
    return fn

  return register


# 4.2.1 Self-information, entropy, KL -------------------------------------------------


@check("4.2.1", "I(x) = -log_b p(x) in bits, nats and hartleys; I_2 = I_e / ln 2")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  p = jnp.asarray(rng.uniform(1e-6, 1, size=N), dtype)
  errs = [error(info.self_information(p, base=b), -np.log(_f64(p)) / math.log(b or math.e)) for b in (2, None, 10)]
  errs.append(error(info.self_information(p, base=2), _f64(info.self_information(p)) / math.log(2)))
  return max(errs), ulps(dtype, 4)  # one log and one scaling: a few ulps


@check("4.2.2", "H(P) = -Σ p_i log p_i, with 0·log 0 = 0")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  p = _simplex(rng, (N, C), dtype)
  return error(info.entropy(p), -_np_xlogy(p, p).sum(-1)), ulps(dtype, 4 * C)  # C terms of a few ulps


@check("4.2.3", "H(P) = E_{x~P}[I(x)]")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  p = _simplex(rng, (N, C), dtype)
  expectation = jnp.sum(jnp.where(p > 0, p * info.self_information(jnp.where(p > 0, p, 1)), 0), axis=-1)
  return error(info.entropy(p), expectation), ulps(dtype, 4 * C)


@check("4.2.2–4.2.3", "0 ≤ H(P) ≤ log n; H = 0 iff one-hot, H = log n iff uniform (prose)")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  p = _simplex(rng, (N, C), dtype)
  h = _f64(info.entropy(p))
  onehot = info.entropy(jnp.eye(C, dtype=dtype))
  uniform = info.entropy(jnp.full((C,), 1 / C, dtype))
  bounds = max(violation(h), violation(math.log(C) - h))
  return max(bounds, error(onehot, 0.0), error(uniform, math.log(C))), ulps(dtype, 4 * C)


@check("4.2.2", "H is concave on the simplex: H(λP+(1-λ)Q) ≥ λH(P)+(1-λ)H(Q) (prose)")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  p, q = _simplex(rng, (N, C), dtype), _simplex(rng, (N, C), dtype, zeros=False)
  lam = jnp.asarray(rng.uniform(size=(N, 1)), dtype)
  gap = _f64(info.entropy(lam * p + (1 - lam) * q)) - _f64(
    lam[:, 0] * info.entropy(p) + (1 - lam[:, 0]) * info.entropy(q)
  )
  tol = ulps(dtype, 8 * C)
  strict = 0.0 if np.all(gap > tol) else math.inf  # P ≠ Q and 0 < λ < 1: strictly above the chord
  return max(violation(gap), strict), tol


@check("4.2.4", "KL(P‖Q) = Σ p log(p/q): 0 where p = 0, +inf where q = 0 < p")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  p, q = _simplex(rng, (N, C), dtype), _simplex(rng, (N, C), dtype, zeros=False)
  reference = (_np_xlogy(p, p) - _np_xlogy(p, q)).sum(-1)
  inf_case = info.kl_divergence(jnp.asarray([0.5, 0.5], dtype), jnp.asarray([1.0, 0.0], dtype))
  return max(error(info.kl_divergence(p, q), reference), error(inf_case, math.inf)), ulps(dtype, 8 * C)


@check("4.2.5", "KL(P‖Q) = E_P[log p] - E_P[log q]")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  p, q = _simplex(rng, (N, C), dtype), _simplex(rng, (N, C), dtype, zeros=False)
  split = -info.entropy(p) + info.cross_entropy(p, q)
  return error(info.kl_divergence(p, q), split), ulps(dtype, 8 * C)


@check("4.2.6", "Gibbs: KL(P‖Q) ≥ 0, = 0 iff P = Q")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  p, q = _simplex(rng, (N, C), dtype), _simplex(rng, (N, C), dtype, zeros=False)
  return max(violation(info.kl_divergence(p, q)), error(info.kl_divergence(p, p), 0.0)), ulps(dtype, 8 * C)


@check("4.2.4", "KL is not symmetric: KL(P‖Q) ≠ KL(Q‖P) on a witness pair (prose)")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  p, q = jnp.asarray([0.5, 0.5], dtype), jnp.asarray([0.25, 0.75], dtype)
  forward = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
  backward = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
  err = max(error(info.kl_divergence(p, q), forward), error(info.kl_divergence(q, p), backward))
  return err, ulps(dtype, 8)


@check("4.2.7", "H(P,Q) = -Σ p log q = H(P) + KL(P‖Q)")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  p, q = _simplex(rng, (N, C), dtype), _simplex(rng, (N, C), dtype, zeros=False)
  h_pq = info.cross_entropy(p, q)
  return max(
    error(h_pq, -_np_xlogy(p, q).sum(-1)), error(h_pq, _f64(info.entropy(p)) + _f64(info.kl_divergence(p, q)))
  ), ulps(dtype, 8 * C)


@check("4.2.8–4.2.9", "argmin_θ KL(P‖Q_θ) = argmin_θ H(P,Q_θ): equal gradients in θ")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  p, theta = _simplex(rng, (C,), dtype), _logits(rng, (C,), dtype)
  g_kl = jax.grad(lambda t: info.kl_divergence(p, jax.nn.softmax(t)))(theta)
  g_ce = jax.grad(lambda t: losses.softmax_cross_entropy(t, p))(theta)
  return error(g_kl, g_ce), ulps(dtype, 16 * C)  # KL goes through p/q: a chain of C-term sums


@check("4.2.7", "H(P,Q) ≥ H(P), equality iff Q = P; H(P,Q) ≠ H(Q,P) (prose)")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  p, q = _simplex(rng, (N, C), dtype, zeros=False), _simplex(rng, (N, C), dtype, zeros=False)
  gap = _f64(info.cross_entropy(p, q)) - _f64(info.entropy(p))
  asym = np.abs(_f64(info.cross_entropy(p, q)) - _f64(info.cross_entropy(q, p)))
  err = max(violation(gap), error(info.cross_entropy(p, p), info.entropy(p)), 0.0 if asym.max() > 1e-3 else math.inf)
  return err, ulps(dtype, 8 * C)


@check("4.2.10", "∂H(P,Q_θ)/∂θ by jax.grad = chain rule Jᵀ(-p/q)")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  p, theta = _simplex(rng, (C,), dtype), _logits(rng, (C,), dtype)
  q = jax.nn.softmax(theta)
  chain = cf.softmax_jacobian(theta).T @ cf.cross_entropy_probability_gradient(q, p)
  autodiff = jax.grad(lambda t: info.cross_entropy(p, jax.nn.softmax(t)))(theta)
  return error(autodiff, chain), ulps(dtype, 16 * C)


# 4.2.2 Binary and multi-class cross-entropy -------------------------------------------


@check("4.2.11", "BCE from probabilities = BCE from logits = reference = 2-class CE")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z, y = _logits(rng, (N,), dtype), jnp.asarray(rng.uniform(size=N), dtype)
  s = 1 / (1 + np.exp(-_f64(z)))
  reference = -(_f64(y) * np.log(s) + (1 - _f64(y)) * np.log1p(-s))
  from_logits = losses.sigmoid_binary_cross_entropy(z, y)
  two_class = losses.softmax_cross_entropy(jnp.stack([jnp.zeros_like(z), z], -1), jnp.stack([1 - y, y], -1))
  from_probs = losses.binary_cross_entropy(jnp.asarray(s, dtype), y)
  # from_probs sees σ(z) rounded to the dtype: relative error eps·|z| in log(1-σ)
  err_probs = error(from_probs, reference) / (1 + float(np.abs(_f64(z)).max()))
  return max(error(from_logits, reference), error(two_class, reference), err_probs), ulps(dtype, 16)


@check("4.2.12", "dataset NLL of a Bernoulli model = Σ_n BCE_n")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  p, y = jnp.asarray(rng.uniform(0.05, 0.95, size=N), dtype), jnp.asarray(rng.integers(0, 2, N), dtype)
  likelihood = np.prod(np.where(_f64(y) == 1, _f64(p), 1 - _f64(p)))
  return error(jnp.sum(losses.binary_cross_entropy(p, y)), -np.log(likelihood)), ulps(dtype, 4 * N)


@check("4.2.13", "softmax sums to 1, preserves order, is shift invariant, also at |z| = 1e4")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z = _logits(rng, (N, C), dtype).at[0].multiply(3e3)
  s = jax.nn.softmax(z)
  order = np.argsort(_f64(z), -1)
  sorted_s = np.take_along_axis(_f64(s), order, -1)
  shift = jax.nn.softmax(z + jnp.asarray(100.0, dtype))
  err = max(
    error(jnp.sum(s, -1), 1.0), violation(np.diff(sorted_s, axis=-1)), error(shift, s) if dtype == jnp.float64 else 0.0
  )
  err = max(err, error(shift, np.exp(_np_log_softmax(z))) / (1 + 100.0))  # adding 100 rounds z by ulp(100)
  return err, ulps(dtype, 4 * C)


@check("4.2.14", "attention softmax(QKᵀ/√d)V: row-stochastic, equals a float64 reference")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  q, k, v = (_logits(rng, (4, 6), dtype, 1.0) for _ in range(3))
  weights = jax.nn.softmax(q @ k.T / jnp.sqrt(jnp.asarray(6.0, dtype)), axis=-1)
  reference = np.exp(_np_log_softmax(_f64(q) @ _f64(k).T / math.sqrt(6))) @ _f64(v)
  # jax.nn.dot_product_attention computes its softmax in float32 even for
  # float64 inputs (3.9e-8 measured), so it is given float32 and held to float32's tolerance.
  q32, k32, v32 = (x.astype(jnp.float32)[None, :, None] for x in (q, k, v))
  fused = jax.nn.dot_product_attention(q32, k32, v32)[0, :, 0]
  agrees = 0.0 if error(fused, reference) <= ulps(jnp.float32, 16 * 6) else math.inf
  return max(error(jnp.sum(weights, -1), 1.0), error(weights @ v, reference), agrees), ulps(dtype, 16 * 6)


@check("4.2.15", "one-hot CE = integer-label CE = -log p̂_{c*}")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z, labels = _logits(rng, (N, C), dtype), rng.integers(0, C, N)
  soft = losses.softmax_cross_entropy(z, jax.nn.one_hot(labels, C, dtype=dtype))
  hard = losses.softmax_cross_entropy_with_integer_labels(z, jnp.asarray(labels))
  reference = _np_nll(z, labels)
  return max(error(soft, reference), error(hard, reference)), ulps(dtype, 2 * C)


@check("4.2.16", "L = -(1/N) Σ_n log p̂_{n,c_n}: the mean reduction")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z, labels = _logits(rng, (N, C), dtype), rng.integers(0, C, N)
  mean = jnp.mean(losses.softmax_cross_entropy_with_integer_labels(z, jnp.asarray(labels)))
  return error(mean, np.mean(_np_nll(z, labels))), ulps(dtype, 2 * C + N)


@check("4.2.17", "the naive chain z → softmax → log → CE equals the fused loss where finite")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z, p = _logits(rng, (N, C), dtype), _simplex(rng, (N, C), dtype)
  return error(cf.unfused_softmax_cross_entropy(z, p), losses.softmax_cross_entropy(z, p)), ulps(dtype, 8 * C)


@check("4.2.18", "MSE on probabilities = reference; its gradient vanishes as p̂ saturates, CE's does not")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z, p = _logits(rng, (N, C), dtype), _simplex(rng, (N, C), dtype)
  value = error(losses.mse_on_probabilities(z, p), ((_f64(p) - np.exp(_np_log_softmax(z))) ** 2).sum(-1))
  saturated = jnp.asarray([0.0, 30.0, 0.0], dtype)
  target = jnp.asarray([1.0, 0.0, 0.0], dtype)
  g_mse = np.abs(_f64(jax.grad(losses.mse_on_probabilities)(saturated, target))).max()
  g_ce = jax.grad(losses.softmax_cross_entropy)(saturated, target)
  vanishing = violation(8 * math.exp(-30.0) - g_mse)  # |∇ MSE| ≈ 6 e^{-30}
  ce_gradient = np.exp(_np_log_softmax(saturated)) - _f64(target)  # ≈ (-1, 1, 0): does not vanish
  return max(value, vanishing, error(g_ce, ce_gradient)), ulps(dtype, 8 * C)


@check("4.2.19–4.2.22", "BCE: ∂L/∂p̂ = -(y/p̂ - (1-y)/(1-p̂)), ∂p̂/∂z = p̂(1-p̂), ∂L/∂z = p̂ - y")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z, y = _logits(rng, (N,), dtype), jnp.asarray(rng.uniform(size=N), dtype)
  p_hat = jax.nn.sigmoid(z)
  d_p = jax.grad(lambda q: jnp.sum(losses.binary_cross_entropy(q, y)))(p_hat)
  d_sigmoid = jax.vmap(jax.grad(jax.nn.sigmoid))(z)
  d_z = jax.grad(lambda z: jnp.sum(losses.sigmoid_binary_cross_entropy(z, y)))(z)
  d_z_fwd = jnp.diagonal(jax.jacfwd(lambda z: losses.sigmoid_binary_cross_entropy(z, y))(z))
  errs = [
    error(d_p, cf.binary_cross_entropy_gradient(p_hat, y)),
    error(d_sigmoid, cf.sigmoid_derivative(z)),
    error(d_z, cf.sigmoid_binary_cross_entropy_gradient(z, y)),
    error(d_z_fwd, cf.sigmoid_binary_cross_entropy_gradient(z, y)),
  ]
  return max(errs), ulps(dtype, 16)


@check("4.2.22", "sigmoid-MSE gradient: ∂(σ(z)-y)²/∂z = 2(p̂-y)p̂(1-p̂) (prose)")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z, y = _logits(rng, (N,), dtype), jnp.asarray(rng.uniform(size=N), dtype)
  autodiff = jax.vmap(jax.grad(lambda z, y: (jax.nn.sigmoid(z) - y) ** 2))(z, y)
  return error(autodiff, cf.sigmoid_mse_gradient(z, y)), ulps(dtype, 16)


@check("4.2.23–4.2.25", "L = -Σ p log p̂, ∂L/∂p̂_i = -p_i/p̂_i")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  p, q = _simplex(rng, (N, C), dtype), _simplex(rng, (N, C), dtype, zeros=False)
  autodiff = jax.grad(lambda q: jnp.sum(info.cross_entropy(p, q)))(q)
  return max(
    error(info.cross_entropy(p, q), -_np_xlogy(p, q).sum(-1)),
    error(autodiff, cf.cross_entropy_probability_gradient(q, p)),
  ), ulps(dtype, 4 * C)


@check("4.2.26–4.2.28", "softmax Jacobian: p̂_k(1-p̂_k) on the diagonal, -p̂_i p̂_k off it (jacfwd, jacrev)")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z = _logits(rng, (C,), dtype)
  s = np.exp(_np_log_softmax(z))
  reference = np.diag(s) - np.outer(s, s)
  return max(
    error(jax.jacfwd(jax.nn.softmax)(z), reference),
    error(jax.jacrev(jax.nn.softmax)(z), reference),
    error(cf.softmax_jacobian(z), reference),
  ), ulps(dtype, 4 * C)


@check(
  "4.2.29–4.2.31",
  "∂L/∂z = p̂·Σp - p: p̂ - p for one-hot and soft targets, fused loss in both modes vs closed form",
  note="seed corrected: p̂ - p needs Σp = 1; for unnormalised targets the gradient is p̂·Σp - p",
)
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z = _logits(rng, (N, C), dtype)
  fused = lambda z, p: jnp.sum(losses.softmax_cross_entropy(z, p))
  chain = lambda z, p: jnp.sum(cf.unfused_softmax_cross_entropy(z, p))
  errs = []
  for p in (
    jax.nn.one_hot(rng.integers(0, C, N), C, dtype=dtype),
    _simplex(rng, (N, C), dtype),
    3 * _simplex(rng, (N, C), dtype),
  ):
    reference = np.exp(_np_log_softmax(z)) * _f64(p).sum(-1, keepdims=True) - _f64(p)
    grads = (
      jax.grad(fused)(z, p),
      jax.jacfwd(fused)(z, p),
      jax.jacfwd(chain)(z, p),
      cf.softmax_cross_entropy_gradient(z, p),
    )
    errs += [error(g, reference) for g in grads]
  return max(errs), ulps(dtype, 8 * C)


@check(
  "4.2.32–4.2.33",
  "J = diag(p̂) - p̂p̂ᵀ; rows and columns sum to 0; vᵀJv = Var_p̂(v) ≥ 0, so J is PSD",
  note="seed corrected: the seed calls J negative semi-definite; vᵀJv = Var ≥ 0 makes it positive semi-definite",
)
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z, v = _logits(rng, (C,), dtype), _logits(rng, (N, C), dtype, 1.0)
  jac = jax.jacfwd(jax.nn.softmax)(z)
  s = np.exp(_np_log_softmax(z))
  quad = jnp.einsum("ni,ij,nj->n", v, jac, v)
  variance = (s * _f64(v) ** 2).sum(-1) - ((s * _f64(v)).sum(-1)) ** 2
  eig = np.linalg.eigvalsh(_f64(cf.softmax_jacobian(z)))
  err = max(
    error(jac, np.diag(s) - np.outer(s, s)),
    error(jac.sum(0), 0.0),
    error(jac.sum(1), 0.0),
    error(quad, variance),
    violation(eig + ulps(dtype, 4 * C)),
  )
  hessian = jax.hessian(losses.softmax_cross_entropy_with_integer_labels)(z, jnp.asarray(0))
  return max(err, error(hessian, np.diag(s) - np.outer(s, s))), ulps(dtype, 8 * C)


@check("4.2.34", "saturation: the naive chain gives inf/NaN where the fused loss stays finite and exact")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  big = float(jnp.finfo(dtype).max) ** 0.5 * 2  # exp overflows far below this
  z = jnp.asarray([[big, 0.0, -big], [0.0, big, 1.0]], dtype)
  labels = jnp.asarray([1, 1])
  naive = cf.unfused_softmax_cross_entropy(z, jax.nn.one_hot(labels, 3, dtype=dtype))
  fused = losses.softmax_cross_entropy_with_integer_labels(z, labels)
  naive_breaks = 0.0 if not np.all(np.isfinite(_f64(naive))) else math.inf
  return max(naive_breaks, error(fused, [big, 0.0])), ulps(dtype, 4)


@check("4.2.34", "exp overflows at z ≈ 88.72 in float32 and ≈ 709.78 in float64 (prose)")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  threshold = math.log(float(jnp.finfo(dtype).max))
  stated = {jnp.dtype(jnp.float32): 88.72, jnp.dtype(jnp.float64): 709.78}[jnp.dtype(dtype)]
  below = jnp.exp(jnp.asarray(threshold * (1 - ulps(dtype, 4)), dtype))
  above = jnp.exp(jnp.asarray(threshold * (1 + ulps(dtype, 4)), dtype))
  flips = 0.0 if bool(jnp.isfinite(below)) and not bool(jnp.isfinite(above)) else math.inf
  return max(flips, abs(threshold - stated) / stated), 0.005 / 88.72  # the seed quotes 2 decimals


@check("4.2.35", "logsumexp(z) = M + log Σ e^{z-M}; finite for |z| up to the dtype's max")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z = _logits(rng, (N, C), dtype)
  m = _f64(z).max(-1)
  reference = m + np.log(np.exp(_f64(z) - m[:, None]).sum(-1))
  huge = float(jnp.finfo(dtype).max) / 2
  extreme = jax.nn.logsumexp(jnp.asarray([huge, -huge, 0.0], dtype))
  return max(error(jax.nn.logsumexp(z, axis=-1), reference), error(extreme, huge)), ulps(dtype, 4 * C)


@check("4.2.35", "online LogSumExp over vocabulary chunks (linear CE): value and ∂/∂h, ∂/∂W = float64 closed forms")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  h, w = _logits(rng, (N, 8), dtype, 1.0), _logits(rng, (8, 3 * C + 5), dtype, 1.0)
  labels = rng.integers(0, w.shape[1], N)
  z = _f64(h) @ _f64(w)
  g = np.exp(_np_log_softmax(z)) - np.eye(w.shape[1])[labels]  # p̂ - onehot (Eq. 4.2.40)
  fn = lambda h, w: jnp.sum(_linear.linear_cross_entropy(h, w, jnp.asarray(labels), chunk_size=C))
  value, (dh, dw) = jax.value_and_grad(fn, (0, 1))(h, w)
  errors = (error(value, _np_nll(z, labels).sum()), error(dh, g @ _f64(w).T), error(dw, _f64(h).T @ g))
  return max(errors), ulps(dtype, 4 * N * h.shape[1])


@check("4.2.36", "stable softmax equals the naive one where that is finite, and is finite everywhere")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z = _logits(rng, (N, C), dtype)
  naive = jnp.exp(z) / jnp.sum(jnp.exp(z), -1, keepdims=True)
  huge = jnp.asarray([float(jnp.finfo(dtype).max) / 2, 0.0, -1e4], dtype)
  finite = 0.0 if bool(jnp.all(jnp.isfinite(jax.nn.softmax(huge)))) else math.inf
  return max(error(jax.nn.softmax(z), naive), finite), ulps(dtype, 4 * C)


@check(
  "4.2.37–4.2.38",
  "fused L = logsumexp(z) - z_{c*} equals the float64 reference, also at |z| = 1e4",
  note="seed corrected: the fused form still computes exp(z_i - M); it avoids exp(z_i) unshifted",
)
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z, labels = _logits(rng, (N, C), dtype).at[0].multiply(3e3), rng.integers(0, C, N)
  reference = _np_nll(z, labels)
  scale = float(np.abs(_f64(z)).max())  # z_c - M is rounded at the scale of z
  return error(losses.softmax_cross_entropy_with_integer_labels(z, jnp.asarray(labels)), reference), ulps(
    dtype, 2 * C + scale
  )


@check(
  "4.2.39–4.2.40", "fused gradient p̂ - 1{k=c*} (grad and jacfwd) equals the reference's; no N×C residual but the logits"
)
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z, labels = _logits(rng, (N, C), dtype), jnp.asarray(rng.integers(0, C, N))

  def fused(z: jax.Array) -> jax.Array:
    return losses.softmax_cross_entropy_with_integer_labels(z, labels)

  def unfused(z: jax.Array) -> jax.Array:
    return cf.unfused_softmax_cross_entropy(z, jax.nn.one_hot(labels, C, dtype=dtype))

  reference = jax.grad(lambda z: jnp.sum(unfused(z)))(z)
  grad_err = max(
    error(jax.grad(lambda z: jnp.sum(fused(z)))(z), reference),
    error(jax.jacfwd(lambda z: jnp.sum(fused(z)))(z), reference),
  )
  _, vjp = jax.vjp(fused, z)
  big = [leaf for leaf in jax.tree_util.tree_leaves(vjp) if leaf.size >= N * C]
  residuals = 0.0 if len(big) == 1 else math.inf  # only the logits themselves
  return max(grad_err, residuals), ulps(dtype, 8 * C)


# 4.2.3 Maximum likelihood -------------------------------------------------------------


@check("4.2.41–4.2.43", "log Π_n p̂_n = Σ_n log p̂_n; the MLE of a categorical is the empirical frequency")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z, labels = _logits(rng, (N, C), dtype, 0.5), rng.integers(0, C, N)
  probs = np.exp(-_np_nll(z, labels))
  log_likelihood = -jnp.sum(losses.softmax_cross_entropy_with_integer_labels(z, jnp.asarray(labels)))
  counts = np.bincount(labels, minlength=C)
  freq = jnp.asarray(counts / N, dtype)
  grad_at_mle = jax.grad(lambda q: jnp.sum(info.cross_entropy(freq, q)) + jnp.sum(q))(freq)  # Lagrangian stationarity
  stationary = error(jnp.where(freq > 0, grad_at_mle, 0.0), 0.0)
  return max(error(log_likelihood, np.log(np.prod(probs))), stationary), ulps(dtype, 4 * N)


def _train(loss: Callable[[jax.Array], jax.Array], params: jax.Array, steps: int, learning_rate: float) -> jax.Array:
  opt = optax.sgd(learning_rate)

  def step(carry: tuple[jax.Array, Any], _: None) -> tuple[tuple[jax.Array, Any], None]:
    params, state = carry
    grads = jax.grad(loss)(params)
    updates, state = opt.update(grads, state)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), length=steps)
  return params


@check("4.2.44–4.2.46", "training with CE and with -log-likelihood (optax SGD) reaches the same parameters")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  x, labels = jnp.asarray(rng.normal(size=(N, 3)), dtype), jnp.asarray(rng.integers(0, C, N))
  w0 = jnp.zeros((3, C), dtype)
  ce = lambda w: jnp.mean(losses.softmax_cross_entropy_with_integer_labels(x @ w, labels))
  nll = lambda w: -jnp.mean(jnp.log(jnp.take_along_axis(jax.nn.softmax(x @ w), labels[:, None], -1)))
  w_ce, w_nll = jax.jit(lambda w: (_train(ce, w, 200, 0.5), _train(nll, w, 200, 0.5)))(w0)
  return error(w_ce, w_nll), ulps(dtype, 200 * 8)  # 200 steps, each a few ulps apart


@check("4.2.44–4.2.46", "a bias-only model trained with CE converges to the log class frequencies (prose)")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  labels = jnp.asarray(rng.choice(4, size=64, p=[0.1, 0.2, 0.3, 0.4]))
  freq = np.bincount(np.asarray(labels), minlength=4) / 64
  loss = lambda b: jnp.mean(losses.softmax_cross_entropy_with_integer_labels(jnp.broadcast_to(b, (64, 4)), labels))
  bias = jax.jit(lambda b: _train(loss, b, 2000, 2.0))(jnp.zeros(4, dtype))
  centred = _f64(bias) - _f64(bias).mean()
  target = np.log(freq) - np.log(freq).mean()
  # SGD stops at gradient norm ~ (1 - λ_min·lr)^2000 in exact arithmetic; the
  # float floor is the ulps of the logits, so hold it to 64 ulps of the dtype.
  return error(centred, target), max(ulps(dtype, 64), 1e-12)


@check("4.2.47", "empirical risk R = (1/N) Σ_n L_n, the mean per-sample CE")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  z, labels = _logits(rng, (N, C), dtype), rng.integers(0, C, N)
  per_sample = losses.softmax_cross_entropy_with_integer_labels(z, jnp.asarray(labels))
  reference = float(np.mean(_np_nll(z, labels)))
  return max(error(jnp.mean(per_sample), reference), error(jnp.sum(per_sample) / N, reference)), ulps(dtype, 2 * C + N)


# 4.4 (announced): InfoNCE and attention share the softmax ------------------------------


@check("4.4", "InfoNCE over similarity scores = integer-label CE on scores/τ with the positive's index")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  q, k = _logits(rng, (N, C), dtype, 1.0), _logits(rng, (N, C), dtype, 1.0)
  q_unit, k_unit = (_f64(x) / np.linalg.norm(_f64(x), axis=-1, keepdims=True) for x in (q, k))
  scores = q_unit @ k_unit.T / 0.2
  reference = _np_nll(scores, np.arange(N))
  via_ce = losses.softmax_cross_entropy_with_integer_labels(jnp.asarray(scores, dtype), jnp.arange(N))
  return max(error(contrastive.info_nce(q, k, temperature=0.2), reference), error(via_ce, reference)), ulps(
    dtype, 8 * N
  )


@check("4.4", "with τ = √d_k, InfoNCE = -log of the attention weight softmax(QKᵀ/√d_k) on the positive")
def _(rng: np.random.Generator, dtype: DTypeLike) -> tuple[float, float]:
  q, k = _logits(rng, (N, C), dtype, 1.0), _logits(rng, (N, C), dtype, 1.0)
  weights = contrastive.attention_weights(q, k)
  loss = contrastive.info_nce(q, k, temperature=math.sqrt(C), normalize=False)
  reference = _np_nll(_f64(q) @ _f64(k).T / math.sqrt(C), np.arange(N))
  return max(error(loss, reference), error(loss, -np.log(np.diag(_f64(weights))))), ulps(dtype, 8 * N)


# Running ------------------------------------------------------------------------------

DTYPES = (jnp.float32, jnp.float64)


def run_check(chk: Check, dtype: DTypeLike, seed: int = 0) -> CheckResult:
  """Runs one check in one dtype (float64 under ``jax.enable_x64``).

  Matrix products run at full precision (GPUs default to TF32 for float32
  matmuls, which would measure the hardware's rounding, not the mathematics).
  """
  rng = np.random.default_rng(seed)
  with jax.enable_x64(jnp.dtype(dtype) == jnp.float64), jax.default_matmul_precision("highest"):
    err, tol = chk.run(rng, dtype)
  return CheckResult(chk.equation, chk.claim, jnp.dtype(dtype).name, float(err), float(tol), bool(err <= tol), chk.note)


def select(only: str | None = None) -> list[Check]:
  """The checks whose equations include ``only`` (e.g. "4.2.33"), or all."""
  if only is None:
    return list(REGISTRY)
  m = re.fullmatch(r"4\.2\.(\d+)", only.strip())
  if m:
    return [c for c in REGISTRY if int(m.group(1)) in c.numbers()]
  return [c for c in REGISTRY if only in c.equation]


def run(only: str | None = None, dtypes: Sequence[DTypeLike] = DTYPES) -> list[CheckResult]:
  """Runs the registry (or the checks ``select(only)`` picks) in each dtype."""
  return [run_check(c, d) for c in select(only) for d in dtypes]


def covered_equations(checks: Sequence[Check] = REGISTRY) -> set[int]:
  return set().union(*(c.numbers() for c in checks))


def check_gradient(
  loss_fn: Callable[..., jax.Array],
  closed_form: Callable[..., jax.Array],
  *args: ArrayLike,
  argnums: int = 0,
  jacobian: bool = False,
  equation: str = "user",
  claim: str = "jax autodiff equals the closed form",
  ulps_allowed: float = 64,
) -> CheckResult:
  r"""Checks a user's loss against its claimed closed-form gradient or Jacobian.

  Computes ``jax.grad(loss_fn, argnums)(*args)`` (or ``jax.jacrev`` when
  ``jacobian=True``, for vector-valued functions) and compares it with
  ``closed_form(*args)`` the way the derivation report does.

  Args:
    loss_fn: the function to differentiate; scalar unless ``jacobian``.
    closed_form: the claimed derivative, called with the same ``args``.
    *args: inputs.
    argnums: which argument to differentiate.
    jacobian: compare the full Jacobian instead of the gradient.
    equation, claim: the labels of the report row.
    ulps_allowed: the tolerance in units of the argument dtype's epsilon.

  Returns:
    a :class:`CheckResult`, ``passed`` when the error is within tolerance.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from xent_jax import derivations
    >>> softplus_sum = lambda z: jnp.sum(jax.nn.softplus(z))
    >>> row = derivations.check_gradient(softplus_sum, jax.nn.sigmoid, jnp.linspace(-3.0, 3.0, 7))
    >>> row.passed
    True
  """
  x = jnp.asarray(args[argnums])
  diff = (jax.jacrev if jacobian else jax.grad)(loss_fn, argnums=argnums)
  err = error(diff(*args), closed_form(*args))
  tol = ulps(x.dtype, ulps_allowed)
  return CheckResult(equation, claim, x.dtype.name, err, tol, err <= tol)
