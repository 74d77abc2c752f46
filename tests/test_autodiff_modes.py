"""Both autodiff modes through every public loss and measure, and their compositions.

Each case is a public function with one option set at a tiny shape, in
float64 under ``jax.enable_x64`` inside the test (x64 never leaks), its
differentiated arguments flattened into one vector. One jitted function per
case computes ``jacfwd`` and ``jacrev``, ``linearize`` and ``jvp``, the
Hessian three ways (fwd∘rev = ``jax.hessian``, rev∘rev, fwd∘fwd),
jvp-of-grad, and ``vmap`` of grad and of jvp; they must agree with each
other and with float64 central differences, to second order. One compile per
case keeps the file fast (and the file runs in the child session of
``tests/conftest.py``'s ``IN_CHILD``, beside the rest of the suite).
``jax.test_util.check_grads`` (order 2, both modes,
which also differentiates the jvp in its tangent) runs on the fused losses. A last part holds ``jacfwd`` of the
library's own losses against the seed's closed forms in float64 numpy
(Eq. 4.2.20, 4.2.26–4.2.33, 4.2.40).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.flatten_util import ravel_pytree
from jax.test_util import check_grads

import xent_jax
from xent_jax import closed_forms, info

import references as ref


def _rng(name):
  return np.random.default_rng(sum(map(ord, name)))


def _probabilities(rng, *shape):
  return rng.dirichlet(np.full(shape[-1], 5.0), size=shape[:-1])  # no tiny p: finite differences stay accurate


def _concat(*outputs):
  """Several functions' outputs as one vector: one case, one compile, for functions of the same arguments."""
  return jnp.concatenate([jnp.ravel(o) for o in outputs])


# (name, function of the differentiated arguments, builder of those arguments from a rng, the public
# functions it covers). Labels, masks and options are closed over: they are not differentiated.
Y3 = np.array([1, 4, 0])
Y3_IGNORED = np.array([1, -100, 0])
WHERE_CLASS = np.array([[1, 1, 0, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]], bool)
WHERE_ROW = np.array([True, False, True])
Y_SUP = np.array([0, 0, 1, 1])
LOGITS_AND_PROBABILITIES = lambda r: (r.normal(size=(3, 5)), _probabilities(r, 3, 5))

CASES = [
  (
    "softmax_ce",
    lambda z, p: _concat(
      xent_jax.softmax_cross_entropy(z, p, where=WHERE_CLASS),
      xent_jax.softmax_cross_entropy(z.reshape(3, 5, 1), p.reshape(3, 5, 1), axis=(2, 1)),
      xent_jax.safe_softmax_cross_entropy(z, p),
    ),
    LOGITS_AND_PROBABILITIES,
    ("softmax_cross_entropy", "safe_softmax_cross_entropy"),
  ),
  (
    "softmax_ce-where-row",
    lambda z, p: xent_jax.softmax_cross_entropy(z, p, where=WHERE_ROW),
    LOGITS_AND_PROBABILITIES,
    (),
  ),
  (
    "integer_ce",
    lambda z, w: _concat(
      xent_jax.softmax_cross_entropy_with_integer_labels(
        z, Y3_IGNORED, class_weights=w, ignore_index=-100, label_smoothing=0.1, z_loss=1e-2
      ),
      xent_jax.softmax_cross_entropy_with_integer_labels(z, Y3, where=WHERE_CLASS, label_smoothing=0.2),
      xent_jax.softmax_cross_entropy_with_integer_labels(z.reshape(3, 1, 5), Y3, axis=(-1, -2)),
    ),
    lambda r: (r.normal(size=(3, 5)), r.uniform(0.5, 2, 5)),
    ("softmax_cross_entropy_with_integer_labels",),
  ),
  (
    "integer_ce-where-row",
    lambda z: xent_jax.softmax_cross_entropy_with_integer_labels(z, Y3, where=WHERE_ROW),
    lambda r: (r.normal(size=(3, 5)),),
    (),
  ),
  (
    "cross_entropy",
    lambda z, w, p: _concat(
      xent_jax.cross_entropy(z, Y3_IGNORED, weight=w, label_smoothing=0.1),
      xent_jax.cross_entropy(z, p, reduction="sum", label_smoothing=0.1),
      xent_jax.cross_entropy(z.reshape(3, 5, 1), Y3.reshape(3, 1), reduction="none", axis=1),
    ),
    lambda r: (r.normal(size=(3, 5)), r.uniform(0.5, 2, 5), _probabilities(r, 3, 5)),
    ("cross_entropy",),
  ),
  # V = 7 in chunks of 3: full chunks and a remainder
  (
    "linear_ce",
    lambda h, w: _concat(
      xent_jax.linear_cross_entropy(h, w, Y3 % 7, chunk_size=3),
      xent_jax.linear_cross_entropy(
        h,
        w,
        Y3_IGNORED,
        ignore_index=-100,
        label_smoothing=0.1,
        z_loss=1e-2,
        softcap=3.0,
        chunk_size=3,
        reduction="mean",
      ),
      xent_jax.linear_cross_entropy(h, w, Y3 % 7, chunk_size=3, reduction="sum"),
    ),
    lambda r: (r.normal(size=(3, 4)), r.normal(size=(4, 7))),
    ("linear_cross_entropy",),
  ),
  (
    "info_nce",
    lambda q, k, n, n_paired, t: _concat(
      xent_jax.info_nce(q, k, n),
      xent_jax.info_nce(q, k, n_paired, negative_mode="paired", in_batch_negatives=True),
      xent_jax.info_nce(q, k, symmetric=True, temperature=t),
    ),
    lambda r: (
      r.normal(size=(3, 4)),
      r.normal(size=(3, 4)),
      r.normal(size=(2, 4)),
      r.normal(size=(3, 2, 4)),
      np.array(0.3),
    ),
    ("info_nce",),
  ),
  (
    "contrastive",
    lambda e, t, q, k, scale, bias: _concat(
      xent_jax.ntxent(e, Y_SUP, t),
      xent_jax.supervised_contrastive(e, Y_SUP, temperature=t),
      xent_jax.sigmoid_contrastive(q, k, logit_scale=scale, logit_bias=bias),
      xent_jax.attention_weights(q, k[:2]),
    ),
    lambda r: (
      r.normal(size=(4, 3)),
      np.array(0.5),
      r.normal(size=(3, 4)),
      r.normal(size=(3, 4)),
      np.array(2.0),
      np.array(-1.0),
    ),
    ("ntxent", "supervised_contrastive", "sigmoid_contrastive", "attention_weights"),
  ),
  (
    "elementwise",
    lambda z, y, w, p_hat, lq, lp: _concat(
      xent_jax.sigmoid_binary_cross_entropy(z, y, pos_weight=w),
      xent_jax.binary_cross_entropy(p_hat, y),
      xent_jax.kl_divergence(lq, jnp.exp(lp), axis=(1, 0)),
      xent_jax.kl_divergence_with_log_targets(lq, lp, where=WHERE_CLASS[:, :4]),
      xent_jax.mse_on_probabilities(
        jnp.concatenate([z, z[:, :1]], -1), jnp.exp(jnp.concatenate([lp, lp[:, :1]], -1)) / 1.5, where=WHERE_CLASS
      ),
    ),
    lambda r: (
      r.normal(size=(3, 4)),
      r.uniform(0.1, 0.9, (3, 4)),
      r.uniform(0.5, 2, 4),
      r.uniform(0.1, 0.9, (3, 4)),
      np.log(_probabilities(r, 3, 4)),
      np.log(_probabilities(r, 3, 4)),
    ),
    (
      "sigmoid_binary_cross_entropy",
      "binary_cross_entropy",
      "kl_divergence",
      "kl_divergence_with_log_targets",
      "mse_on_probabilities",
    ),
  ),
  (
    "jax.nn-and-bound",
    lambda z, loss: _concat(
      xent_jax.softmax(z),
      xent_jax.log_softmax(z),
      xent_jax.logsumexp(z, axis=-1),
      xent_jax.mutual_information_lower_bound(loss, 8),
    ),
    lambda r: (r.normal(size=(2, 4)), np.array(0.7)),
    ("softmax", "log_softmax", "logsumexp", "mutual_information_lower_bound"),
  ),
  (
    "info",
    lambda p, q: _concat(
      info.self_information(p, base=2), info.entropy(p), info.cross_entropy(p, q, base=10), info.kl_divergence(p, q)
    ),
    lambda r: (_probabilities(r, 3, 4), _probabilities(r, 3, 4)),
    tuple(f"info.{n}" for n in info.__all__),
  ),
  (
    "closed_forms",
    lambda z, p: _concat(
      closed_forms.sigmoid_derivative(z),
      closed_forms.softmax_jacobian(z),
      closed_forms.softmax_cross_entropy_gradient(z, p),
      closed_forms.sigmoid_binary_cross_entropy_gradient(z, p),
      closed_forms.binary_cross_entropy_gradient(p, p[::-1]),
      closed_forms.cross_entropy_probability_gradient(p, p[::-1]),
      closed_forms.sigmoid_mse_gradient(z, p),
      closed_forms.mse_on_probabilities_gradient(z, p),
      closed_forms.unfused_softmax_cross_entropy(z, p),
    ),
    lambda r: (r.normal(size=(2, 3)), _probabilities(r, 2, 3)),
    tuple(f"closed_forms.{n}" for n in closed_forms.__all__),
  ),
]
IDS = [c[0] for c in CASES]
# Compositions of the fused CE (checked to second order in every mode above) with smooth maps: the
# Hessian is checked as jax.hessian (fwd over rev) only, which keeps their compiles affordable.
HESSIAN_ONLY = {"cross_entropy", "info_nce", "contrastive"}
_BY_NAME = {c[0]: c[1:3] for c in CASES}


def test_every_public_loss_is_covered():
  """Each loss or measure in ``xent_jax.__all__``, ``info`` and ``closed_forms`` is in a case."""
  covered = {name for c in CASES for name in c[3]}
  public = {n for n in xent_jax.__all__ if n not in ("info", "closed_forms", "derivations")}
  public |= {f"info.{n}" for n in info.__all__} | {f"closed_forms.{n}" for n in closed_forms.__all__}
  assert public == covered, (public - covered, covered - public)


def _x64(args):
  return tuple(jnp.asarray(a, jnp.float64) for a in args)


EPS = 1e-5  # central differences in float64: truncation ~ EPS², rounding ~ 1e-16/EPS


@functools.cache
def _checker(name):
  """One jitted function per case computing every composition, over the differentiated arguments flattened."""
  fn, build = _BY_NAME[name]
  with jax.enable_x64(True):
    _, unravel = ravel_pytree(_x64(build(_rng(name))))

  def flat(x):
    return jnp.ravel(fn(*unravel(x)))

  def check(x, x2, u, v):
    s = lambda x: jnp.vdot(u, flat(x))  # a random cotangent, so no symmetry of Σ hides an error
    _, f_lin = jax.linearize(flat, x)
    steps = jnp.stack([x + EPS * v, x - EPS * v])
    # one batched gradient serves the finite differences of the gradient and vmap: [x + εv, x - εv, x2]
    grads = jax.vmap(jax.grad(s))(jnp.concatenate([steps, x2[None]]))
    return dict(
      jacfwd=jax.jacfwd(flat)(x),
      jacrev=jax.jacrev(flat)(x),
      linearize=f_lin(v),
      fd=jnp.diff(jax.vmap(flat)(steps)[::-1], axis=0)[0] / (2 * EPS),
      hessian=jax.hessian(s)(x),
      **(
        {} if name in HESSIAN_ONLY else {"rev_rev": jax.jacrev(jax.grad(s))(x), "fwd_fwd": jax.jacfwd(jax.jacfwd(s))(x)}
      ),
      fd2=(grads[0] - grads[1]) / (2 * EPS),
      jvp_of_grad=jax.jvp(jax.grad(s), (x,), (v,))[1],
      vmap_grad=grads[2],
      vmap_jvp=jax.vmap(lambda x, v: jax.jvp(s, (x,), (v,))[1])(jnp.stack([x, x2]), jnp.stack([v, -v])),
    )

  return jax.jit(check)


@pytest.mark.parametrize("name", IDS)
def test_both_modes_to_second_order(name):
  """Finite differences, jacfwd = jacrev, linearize, three Hessian compositions, jvp-of-grad, under jit and vmap."""
  build = _BY_NAME[name][1]
  with jax.enable_x64(True):
    rng = _rng(name)
    x, _ = ravel_pytree(_x64(build(rng)))
    x2, _ = ravel_pytree(_x64(build(rng)))
    v = jnp.asarray(rng.normal(size=x.shape))
    u = jnp.asarray(rng.normal(size=_output_size(name)))
    out = _checker(name)(x, x2, u, v)
  out = {k: np.asarray(a) for k, a in out.items()}
  u, v = np.asarray(u), np.asarray(v)
  close = lambda a, b, rtol, what: np.testing.assert_allclose(
    a, b, rtol=rtol, atol=rtol * (1 + np.abs(b).max()), err_msg=what
  )
  close(out["jacfwd"], out["jacrev"], 1e-10, "jacfwd vs jacrev")
  close(out["jacfwd"] @ v, out["fd"], 1e-6, "Jacobian vs central differences")
  close(out["linearize"], out["jacfwd"] @ v, 1e-12, "linearize vs the Jacobian")
  for other in set(out) & {"rev_rev", "fwd_fwd"}:
    close(out[other], out["hessian"], 1e-9, f"{other} vs hessian (fwd over rev)")
  close(out["hessian"], out["hessian"].T, 1e-9, "hessian symmetric")
  close(out["hessian"] @ v, out["fd2"], 1e-5, "Hessian vs central differences of the gradient")
  close(out["jvp_of_grad"], out["hessian"] @ v, 1e-9, "jvp of grad vs H·v")
  close(out["vmap_jvp"][0], u @ out["jacfwd"] @ v, 1e-12, "vmap of jvp vs the Jacobian")
  close(out["vmap_jvp"][1], -out["vmap_grad"] @ v, 1e-12, "vmap of jvp vs vmap of grad at a second point")


@functools.cache
def _output_size(name):
  fn, build = _BY_NAME[name]
  with jax.enable_x64(True):
    return int(np.prod(jax.eval_shape(fn, *_x64(build(_rng(name)))).shape))


# jax.test_util.check_grads itself (it also differentiates the jvp in its tangent) on the fused losses' options.
CHECK_GRADS = {
  "integer_ce-options": (
    lambda z, w: xent_jax.softmax_cross_entropy_with_integer_labels(
      z, Y3_IGNORED, class_weights=w, ignore_index=-100, label_smoothing=0.1, z_loss=1e-2, where=WHERE_CLASS
    ),
    lambda r: (r.normal(size=(3, 5)), r.uniform(0.5, 2, 5)),
  ),
  "softmax_ce-where-class": (
    lambda z, p: xent_jax.softmax_cross_entropy(z, p, where=WHERE_CLASS),
    LOGITS_AND_PROBABILITIES,
  ),
}


# The soft-label forward's 0·√p (a negative target's NaN) made jvp-of-jvp NaN on a masked class until its
# derivative was stopped (issue 15). On the large-input path too: tests/test_large_path.py.
@pytest.mark.parametrize("name", list(CHECK_GRADS))
def test_check_grads(name):
  fn, build = CHECK_GRADS[name]
  with jax.enable_x64(True):
    check_grads(jax.jit(fn), _x64(build(_rng(name))), order=2, modes=("fwd", "rev"))


# ---- jacfwd of the library's own losses against the seed's closed forms, float64 numpy ----------

Z = np.random.default_rng(50).normal(size=(3, 5)) * 2
P = np.random.default_rng(51).dirichlet(np.ones(5), size=3)
Y = np.array([3, 0, 4])


def _per_row(jac):
  """The [row, row, ...] Jacobian of per-row outputs reduced to its diagonal blocks."""
  return np.stack([jac[i, ..., i, :] for i in range(jac.shape[0])])


class SeedClosedFormsTest(parameterized.TestCase):
  """The seed's derivatives from jacfwd (and jacrev) of xent_jax's losses, not of reference functions, under jit."""

  def test_sigmoid_derivative_from_the_bce_curvature(self):
    """Eq. 4.2.20, 4.2.22: ∂L/∂z = σ(z) - y and ∂²L/∂z² = σ(z)(1 - σ(z)) for sigmoid BCE."""
    z, y = Z[0], P[0]
    with jax.enable_x64(True):
      bce = lambda z: xent_jax.sigmoid_binary_cross_entropy(z, y)
      grad = jax.jit(jax.jacfwd(bce))(z)
      curvature = jax.jit(jax.jacfwd(jax.jacfwd(bce)))(z)
    s = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(np.diag(grad), s - y, rtol=1e-12)
    np.testing.assert_allclose(np.einsum("iii->i", curvature), s * (1 - s), rtol=1e-12)
    np.testing.assert_allclose(curvature.sum() - np.einsum("iii->i", curvature).sum(), 0, atol=1e-15)

  def test_softmax_jacobian(self):
    """Eq. 4.2.26–4.2.28, 4.2.32: ∂p̂/∂z = diag(p̂) - p̂p̂ᵀ, from jacfwd of xent_jax.softmax."""
    with jax.enable_x64(True):
      jac = _per_row(np.asarray(jax.jit(jax.jacfwd(xent_jax.softmax))(Z)))
    p_hat = ref.softmax(Z)
    expected = np.stack([np.diag(p) - np.outer(p, p) for p in p_hat])
    np.testing.assert_allclose(jac, expected, rtol=1e-12, atol=1e-15)

  def test_fused_gradients_forward_mode(self):
    """Eq. 4.2.29–4.2.31, 4.2.40: ∂L/∂z = p̂·Σp - p (soft, unnormalised too) and p̂ - e_y (integer)."""
    p_hat = ref.softmax(Z)
    with jax.enable_x64(True):
      for p in (P, 2.5 * P):
        jac = _per_row(np.asarray(jax.jit(jax.jacfwd(xent_jax.softmax_cross_entropy))(Z, p)))
        np.testing.assert_allclose(jac, p_hat * p.sum(-1, keepdims=True) - p, rtol=1e-12, atol=1e-15)
      jac = _per_row(np.asarray(jax.jit(jax.jacfwd(xent_jax.softmax_cross_entropy_with_integer_labels))(Z, Y)))
    np.testing.assert_allclose(jac, p_hat - np.eye(5)[Y], rtol=1e-12, atol=1e-15)

  def test_cross_entropy_hessian_is_the_softmax_jacobian(self):
    """Eq. 4.2.32–4.2.33: the CE Hessian is diag(p̂) - p̂p̂ᵀ, symmetric, PSD, in both compositions."""
    p_hat = ref.softmax(Z[0])
    expected = np.diag(p_hat) - np.outer(p_hat, p_hat)
    with jax.enable_x64(True):
      for loss, label in (
        (xent_jax.softmax_cross_entropy, P[0]),
        (xent_jax.softmax_cross_entropy_with_integer_labels, Y[0]),
      ):
        f = functools.partial(loss, labels=label)
        for hessian in (jax.jacfwd(jax.jacrev(f)), jax.jacfwd(jax.jacfwd(f)), jax.jacrev(jax.jacfwd(f))):
          got = np.asarray(jax.jit(hessian)(Z[0]))
          np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    self.assertGreater(np.linalg.eigvalsh(expected).min(), -1e-15)

  def test_mse_on_probabilities_gradient_forward_mode(self):
    """Eq. 4.2.18: ∂/∂z Σ(p - p̂)² = 2J(p̂ - p)."""
    with jax.enable_x64(True):
      jac = _per_row(np.asarray(jax.jit(jax.jacfwd(xent_jax.mse_on_probabilities))(Z, P)))
    p_hat = ref.softmax(Z)
    expected = np.stack([2 * (np.diag(q) - np.outer(q, q)) @ (q - p) for q, p in zip(p_hat, P, strict=True)])
    np.testing.assert_allclose(jac, expected, rtol=1e-12, atol=1e-15)

  def test_linear_cross_entropy_forward_mode(self):
    """Eq. 4.2.40 through the classifier: ∂L/∂h = (p̂ - e_y) Wᵀ, ∂L/∂W = hᵀ(p̂ - e_y), from jacfwd."""
    rng = np.random.default_rng(52)
    h, w, y = rng.normal(size=(3, 4)), rng.normal(size=(4, 7)), np.array([6, 0, 3])
    with jax.enable_x64(True):
      loss = lambda h, w: jnp.sum(xent_jax.linear_cross_entropy(h, w, y, chunk_size=3))
      d_h, d_w = jax.jit(jax.jacfwd(loss, argnums=(0, 1)))(h, w)
    g = ref.softmax(h @ w) - np.eye(7)[y]
    np.testing.assert_allclose(d_h, g @ w.T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(d_w, h.T @ g, rtol=1e-12, atol=1e-14)


def test_x64_does_not_leak():
  assert jnp.asarray(1.0).dtype == jnp.float32
