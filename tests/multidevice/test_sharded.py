"""Sharded losses on 8 devices equal the single-device ones (values and gradients within 1e-5).

Automatic partitioning under jit (Auto and Explicit mesh axes), vocabulary
parallelism with ``axis_name`` inside ``shard_map``, and InfoNCE with the keys
of every device as negatives.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import xent_jax

DEVICES = 8
TOL = {"rtol": 1e-5, "atol": 1e-5}
RNG = np.random.default_rng(5)
B, C = 16, 64
Z = (RNG.normal(size=(B, C)) * 3).astype(np.float32)
Y = RNG.integers(0, C, B).astype(np.int32)
SOFT = RNG.dirichlet(np.ones(C), B).astype(np.float32)
WHERE = RNG.random((B, C)) > 0.2
WHERE[np.arange(B), Y] = True
U = RNG.uniform(0.5, 2.0, B).astype(np.float32)  # a non-uniform upstream gradient


def _mesh(kind):
  return jax.make_mesh((DEVICES,), ("x",), axis_types=(getattr(AxisType, kind),))


def _close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL), a, b)


LOSSES = {
  "int": (xent_jax.softmax_cross_entropy_with_integer_labels, Y),
  "soft": (xent_jax.softmax_cross_entropy, SOFT),
}


@pytest.mark.parametrize("kind", ["Auto", "Explicit"])
@pytest.mark.parametrize("spec", [P(None, "x"), P("x", None)], ids=["vocab", "batch"])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_automatic_partitioning(kind, spec, loss):
  """jit on sharded logits: single-device values and gradients, the gradient keeps the
  logits' sharding, and the compiled program gathers nothing."""
  fn, labels = LOSSES[loss]
  objective = jax.jit(jax.value_and_grad(lambda z, y: jnp.sum(U * fn(z, y))))
  want = objective(Z, labels)
  mesh = _mesh(kind)
  z = jax.device_put(Z, NamedSharding(mesh, spec))
  got = objective(z, labels)
  _close(got, want)
  assert got[1].sharding.spec == spec
  assert "all-gather" not in objective.lower(z, labels).compile().as_text()


INT_OPTIONS = {
  "plain": {},
  "smoothing-z-loss": {"label_smoothing": 0.1, "z_loss": 1e-3},
  "ignore": {"ignore_index": 3},
  "where-smoothing": {"label_smoothing": 0.2, "where": WHERE},
  "weights": {"class_weights": RNG.uniform(0.5, 2.0, C).astype(np.float32), "label_smoothing": 0.1},
}


@pytest.mark.parametrize("name", list(INT_OPTIONS))
def test_axis_name_integer_labels(name):
  options = dict(INT_OPTIONS[name])
  where, weights = options.pop("where", None), options.pop("class_weights", None)
  labels = np.where(np.arange(B) % 4 == 0, 3, Y).astype(np.int32) if "ignore_index" in options else Y

  def local(z, *extra, axis_name=None):
    kw = dict(options)
    extra = list(extra)
    if where is not None:
      kw["where"] = extra.pop(0)
    if weights is not None:
      kw["class_weights"] = extra.pop(0)
    return xent_jax.softmax_cross_entropy_with_integer_labels(z, labels, axis_name=axis_name, **kw)

  extra = [a for a in (where, weights) if a is not None]
  single = lambda z: jnp.sum(U * local(z, *extra))
  specs = (P(None, "x"), *(P(None, "x") if a.ndim == 2 else P("x") for a in extra))
  mapped = jax.shard_map(functools.partial(local, axis_name="x"), mesh=_mesh("Auto"), in_specs=specs, out_specs=P())
  sharded = lambda z: jnp.sum(U * mapped(z, *extra))
  _close(jax.value_and_grad(sharded)(Z), jax.value_and_grad(single)(Z))
  if weights is not None:  # the class weights' gradient, sharded like them
    gw = jax.grad(lambda w: jnp.sum(U * mapped(Z, w)))(weights)
    want = jax.grad(lambda w: jnp.sum(U * local(Z, w)))(weights)
    _close(gw, want)


@pytest.mark.parametrize("masked", [False, True])
def test_axis_name_soft_labels(masked):
  def local(z, p, *where, axis_name=None):
    return xent_jax.softmax_cross_entropy(z, p, where=where[0] if where else None, axis_name=axis_name)

  extra = (WHERE,) if masked else ()
  mapped = jax.shard_map(
    functools.partial(local, axis_name="x"),
    mesh=_mesh("Auto"),
    in_specs=(P(None, "x"),) * (2 + len(extra)),
    out_specs=P(),
  )
  single = jax.value_and_grad(lambda z: jnp.sum(U * local(z, SOFT, *extra)))(Z)
  sharded = jax.value_and_grad(lambda z: jnp.sum(U * mapped(z, SOFT, *extra)))(Z)
  _close(sharded, single)


@pytest.mark.parametrize("negative", [False, True])
def test_axis_name_soft_labels_value_alone_at_library_size(negative):
  """The loss alone with a split class axis and 2¹⁵ logits per shard (``_fused._soft_value``'s summed path):
  a negative target on one shard sends every shard to the careful branch and makes its row NaN."""
  rng = np.random.default_rng(7)
  z = (rng.normal(size=(4, DEVICES * 8192)) * 3).astype(np.float32)
  p = rng.dirichlet(np.ones(z.shape[1]), z.shape[0]).astype(np.float32)
  if negative:
    p[1, 3] = -1e-3  # on the first shard only
  local = functools.partial(xent_jax.softmax_cross_entropy, axis_name="x")
  mapped = jax.jit(jax.shard_map(local, mesh=_mesh("Auto"), in_specs=(P(None, "x"),) * 2, out_specs=P()))
  got, want = np.asarray(mapped(z, p)), np.asarray(jax.jit(xent_jax.softmax_cross_entropy)(z, p))
  assert np.isnan(got[1]) == negative and np.isnan(want[1]) == negative
  np.testing.assert_allclose(got, want, **TOL)


WEIGHTS = RNG.uniform(0.5, 2.0, C).astype(np.float32)
DATA_PARALLEL = {
  # name: (loss of (z, u, *options), the options, their in_specs): the batch is split,
  # the options are replicated (or broadcast over the batch and replicated).
  "class-weights": (
    lambda z, u, y, w: (
      u * xent_jax.softmax_cross_entropy_with_integer_labels(z, y, class_weights=w, label_smoothing=0.1)
    ),
    (Y, WEIGHTS),
    (P("x"), P()),
  ),
  "soft-broadcast": (lambda z, u, p: u * xent_jax.softmax_cross_entropy(z, p), (SOFT[:1],), (P(),)),
  "soft-where": (
    lambda z, u, p, m: u * xent_jax.softmax_cross_entropy(z, p, where=m),
    (SOFT[:1], WHERE[:1]),
    (P(), P()),
  ),
}


@pytest.mark.parametrize("name", list(DATA_PARALLEL))
def test_data_parallel_with_replicated_options(name):
  """shard_map over the batch with replicated class weights or soft labels: the global loss,
  its gradients (the replicated inputs' summed over the devices) and its forward-mode
  derivative equal one device; the logits' gradient taken inside shard_map too."""
  fn, options, specs = DATA_PARALLEL[name]
  argnums = tuple(i for i, a in enumerate((Z, U, *options)) if a.dtype == np.float32)
  total = lambda *a: jnp.sum(fn(*a))
  mapped = jax.shard_map(
    lambda *a: jax.lax.psum(total(*a), "x"), mesh=_mesh("Auto"), in_specs=(P("x"), P("x"), *specs), out_specs=P()
  )
  args = (Z, U, *options)
  _close(jax.value_and_grad(mapped, argnums)(*args), jax.value_and_grad(total, argnums)(*args))
  tangent = np.ones_like(Z)
  _close(
    jax.jvp(lambda z: mapped(z, *args[1:]), (Z,), (tangent,)), jax.jvp(lambda z: total(z, *args[1:]), (Z,), (tangent,))
  )
  inside = jax.shard_map(
    lambda *a: jax.grad(total)(*a), mesh=_mesh("Auto"), in_specs=(P("x"), P("x"), *specs), out_specs=P("x")
  )
  _close(inside(*args), jax.grad(total)(*args))


@pytest.mark.parametrize("name", ["soft-replicated", "soft-made-inside", "class-weights"])
def test_explicit_sharding_with_replicated_options(name):
  """Explicit mesh axes, batch-split logits, replicated soft labels or class weights."""
  mesh = _mesh("Explicit")
  if name == "class-weights":
    fn = lambda z, w, y: jnp.sum(U * xent_jax.softmax_cross_entropy_with_integer_labels(z, y, class_weights=w))
    options, extra = (WEIGHTS,), (Y,)
  elif name == "soft-replicated":
    fn = lambda z, p: jnp.sum(U * xent_jax.softmax_cross_entropy(z, p))
    options, extra = (SOFT,), ()
  else:
    fn = lambda z, q: jnp.sum(U * xent_jax.softmax_cross_entropy(z, jax.nn.softmax(q)))
    options, extra = (Z[::-1].copy(),), ()
  objective = jax.jit(jax.value_and_grad(fn, (0, 1)))
  want = objective(Z, *options, *extra)
  with jax.set_mesh(mesh):
    z = jax.device_put(Z, P("x", None))
    sharded_options = tuple(jax.device_put(o, P()) for o in options)
    sharded_extra = tuple(jax.device_put(e, P("x")) for e in extra)
    got = objective(z, *sharded_options, *sharded_extra)
  _close(got, want)


N, D, V = 24, 8, 256
H = RNG.normal(size=(N, D)).astype(np.float32)
W = (RNG.normal(size=(D, V)) / 2).astype(np.float32)
YL = RNG.integers(0, V, N).astype(np.int32)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_axis_name_linear_cross_entropy(reduction):
  """Classifier split over the vocabulary: each device holds D × V/8; dW stays local, dX is summed."""
  kw = {"reduction": reduction, "chunk_size": 16, "label_smoothing": 0.1, "z_loss": 1e-3}
  local = lambda h, w, axis_name=None: xent_jax.linear_cross_entropy(h, w, YL, axis_name=axis_name, **kw)
  mapped = jax.shard_map(
    functools.partial(local, axis_name="x"), mesh=_mesh("Auto"), in_specs=(P(), P(None, "x")), out_specs=P()
  )
  weight = U.repeat(2)[:N] if reduction == "none" else np.float32(1.7)
  single = jax.value_and_grad(lambda h, w: jnp.sum(weight * local(h, w)), (0, 1))(H, W)
  sharded = jax.value_and_grad(lambda h, w: jnp.sum(weight * mapped(h, w)), (0, 1))(H, W)
  _close(sharded, single)


Q = RNG.normal(size=(B, D)).astype(np.float32)
K = (Q + 0.5 * RNG.normal(size=(B, D))).astype(np.float32)


def _info_nce_sharded(symmetric=False, gather_gradient=True):
  """Per-query InfoNCE with the batch split over "x" and every device's keys as negatives."""

  def local(q, k):
    if gather_gradient:
      return xent_jax.info_nce(q, k, temperature=0.2, symmetric=symmetric, axis_name="x")
    # The usual PyTorch bug: negatives gathered without their gradient.
    everyone = jax.lax.stop_gradient(jax.lax.all_gather(k, "x", tiled=True))
    labels = jnp.arange(q.shape[0]) + jax.lax.axis_index("x") * q.shape[0]
    qn, kn = (x / jnp.linalg.norm(x, axis=-1, keepdims=True) for x in (q, everyone))
    own = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    logits = (qn @ kn.T) / 0.2
    own_logit = jnp.sum(qn * own, -1) / 0.2  # the positive keeps its gradient
    logits = jnp.where(jnp.arange(kn.shape[0])[None, :] == labels[:, None], own_logit[:, None], logits)
    return xent_jax.softmax_cross_entropy_with_integer_labels(logits, labels)

  return jax.shard_map(local, mesh=_mesh("Auto"), in_specs=(P("x"), P("x")), out_specs=P("x"))


@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_all_devices_keys_are_negatives(symmetric):
  """Values and gradients (w.r.t. queries and keys, through the all_gather's reduce-scatter)."""
  single = lambda q, k: jnp.mean(xent_jax.info_nce(q, k, temperature=0.2, symmetric=symmetric))
  mapped = _info_nce_sharded(symmetric)
  sharded = lambda q, k: jnp.mean(mapped(q, k))
  _close(jax.value_and_grad(sharded, (0, 1))(Q, K), jax.value_and_grad(single, (0, 1))(Q, K))


def test_gather_without_gradient_gets_the_loss_right_and_the_gradient_wrong():
  single = lambda q, k: jnp.mean(xent_jax.info_nce(q, k, temperature=0.2))
  buggy = lambda q, k: jnp.mean(_info_nce_sharded(gather_gradient=False)(q, k))
  want, (_, gk_want) = jax.value_and_grad(single, (0, 1))(Q, K)
  got, (_, gk_buggy) = jax.value_and_grad(buggy, (0, 1))(Q, K)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  error = np.linalg.norm(gk_buggy - gk_want) / np.linalg.norm(gk_want)
  assert error > 0.2, error  # the keys miss their gradient as other devices' negatives


def test_recommended_use_and_the_pmean_pitfall():
  """Take the gradient of the shard_map'd global loss outside it. A grad taken inside, w.r.t.
  a replicated parameter, is already summed over devices; a further psum counts it 8 times."""
  proj = RNG.normal(size=(D, D)).astype(np.float32)
  single = jax.grad(lambda w: jnp.mean(xent_jax.info_nce(Q @ w, K, temperature=0.2)))(proj)
  mesh = _mesh("Auto")

  def global_loss(w, q, k):
    per_query = xent_jax.info_nce(q @ w, k, temperature=0.2, axis_name="x")
    return jax.lax.psum(jnp.sum(per_query), "x") / B

  recommended = jax.grad(
    lambda w: jax.shard_map(global_loss, mesh=mesh, in_specs=(P(), P("x"), P("x")), out_specs=P())(w, Q, K)
  )(proj)
  _close(recommended, single)

  def grad_inside(w, q, k):
    local = lambda w: jnp.sum(xent_jax.info_nce(q @ w, k, temperature=0.2, axis_name="x")) / B
    return jax.lax.psum(jax.grad(local)(w), "x")

  inside = jax.shard_map(grad_inside, mesh=mesh, in_specs=(P(), P("x"), P("x")), out_specs=P())(proj, Q, K)
  ratio = np.linalg.norm(inside) / np.linalg.norm(single)
  np.testing.assert_allclose(ratio, DEVICES, rtol=1e-4)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_linear_cross_entropy_data_parallel(reduction):
  """Tokens split over "x", classifier replicated: dW is summed over the devices."""
  kw = {"reduction": reduction, "chunk_size": 64}

  def local(h, w, y):
    out = xent_jax.linear_cross_entropy(h, w, y, **kw)
    return out if reduction == "none" else jax.lax.pmean(out, "x")

  mapped = jax.shard_map(
    local, mesh=_mesh("Auto"), in_specs=(P("x"), P(), P("x")), out_specs=P("x") if reduction == "none" else P()
  )
  single = jax.value_and_grad(lambda h, w: jnp.sum(xent_jax.linear_cross_entropy(h, w, YL, **kw)), (0, 1))(H, W)
  sharded = jax.value_and_grad(lambda h, w: jnp.sum(mapped(h, w, YL)), (0, 1))(H, W)
  _close(sharded, single)
