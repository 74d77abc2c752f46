"""linear_cross_entropy against the naive composition (matmul, then the integer-label loss) and float64.

The naive side is checked against float64 numpy first, so the fused kernel is
compared with the truth and not only with another JAX function. The chunks
are small, so every loop runs full blocks and a remainder.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xent_jax
from xent_jax import _linear

import references as ref

N, D, V = 13, 8, 300
CHUNK = 64  # 300 = 4·64 + 44: full chunks and a remainder
BLOCKS = (4, 64)  # 13 = 3·4 + 1 tokens by 4·64 + 44 classes
RNG = np.random.default_rng(11)
H = RNG.normal(size=(N, D)).astype(np.float32)
W = (RNG.normal(size=(D, V)) / 2).astype(np.float32)
Y = RNG.integers(0, V, N)
Y_IGNORED = np.where(np.arange(N) % 5 == 2, -100, Y)
U = RNG.uniform(0.5, 2.0, N).astype(np.float32)  # a non-uniform upstream gradient

OPTIONS = {
  "plain": {},
  "smoothing": {"label_smoothing": 0.1},
  "z_loss": {"z_loss": 1e-2},
  "softcap": {"softcap": 4.0},
  "all": {"ignore_index": -100, "label_smoothing": 0.2, "z_loss": 1e-3, "softcap": 3.0},
}


def _naive(h, w, labels, options):
  z = jnp.matmul(h, w, preferred_element_type=jnp.float32 if h.dtype != jnp.float64 else None)
  cap = options.get("softcap")
  if cap is not None:
    z = cap * jnp.tanh(z / cap)
  rest = {k: v for k, v in options.items() if k != "softcap"}
  return xent_jax.softmax_cross_entropy_with_integer_labels(z, labels, **rest)


def _labels(options):
  return Y_IGNORED if "ignore_index" in options else Y


def _close(got, want, rtol=1e-4):
  """Within rtol of the largest entry, leaf by leaf."""
  for g, wg in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, wg, rtol=rtol, atol=rtol * np.abs(wg).max())


def test_naive_reference_is_the_float64_truth():
  got = _naive(H, W, Y, {})
  want = ref.integer_cross_entropy(H.astype(np.float64) @ W.astype(np.float64), Y)
  np.testing.assert_allclose(got, want, rtol=2e-6)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_per_example_values_and_gradients(name):
  """Loss within 1e-5 and gradients within 1e-4 relative, with a non-uniform upstream gradient."""
  options, labels = OPTIONS[name], _labels(OPTIONS[name])
  chunk = BLOCKS if name == "all" else CHUNK
  fused = lambda h, w: jnp.sum(U * xent_jax.linear_cross_entropy(h, w, labels, chunk_size=chunk, **options))
  naive = lambda h, w: jnp.sum(U * _naive(h, w, labels, options))
  value, grads = jax.jit(jax.value_and_grad(fused, (0, 1)))(H, W)
  want, want_grads = jax.jit(jax.value_and_grad(naive, (0, 1)))(H, W)
  np.testing.assert_allclose(value, want, rtol=1e-5)
  _close(grads, want_grads)


@pytest.mark.parametrize(
  ("reduction", "name", "chunk"), [("mean", "plain", None), ("sum", "all", BLOCKS), ("mean", "all", CHUNK)]
)
def test_scalar_reductions(reduction, name, chunk):
  """Sum and mean (over the tokens counted) with a non-unit upstream gradient."""
  options, labels = OPTIONS[name], _labels(OPTIONS[name])
  counted = float(np.sum(labels != options.get("ignore_index", -1)))

  def naive(h, w):
    total = jnp.sum(_naive(h, w, labels, options))
    return total / counted if reduction == "mean" else total

  fused = lambda h, w: xent_jax.linear_cross_entropy(h, w, labels, chunk_size=chunk, reduction=reduction, **options)
  value_and_vjp = lambda f: jax.jit(lambda h, w: (lambda out, vjp: (out, vjp(jnp.float32(2.5))))(*jax.vjp(f, h, w)))(
    H, W
  )
  (value, grads), (want, want_grads) = value_and_vjp(fused), value_and_vjp(naive)
  np.testing.assert_allclose(value, want, rtol=1e-5)
  _close(grads, want_grads)


def test_where_and_bad_labels():
  """A bad label's token is NaN in the value and in both modes' derivatives; tokens left out give 0."""
  where = np.arange(N) % 3 != 0
  labels = Y.copy()
  labels[4] = V  # out of range and kept: NaN
  out = xent_jax.linear_cross_entropy(H, W, labels, where=where, chunk_size=CHUNK)
  want = np.where(where, _naive(H, W, np.clip(labels, 0, V - 1), {}), 0.0)
  assert np.isnan(out[4])
  keep = np.arange(N) != 4
  np.testing.assert_allclose(out[keep], want[keep], rtol=1e-5)
  per_token = lambda h: xent_jax.linear_cross_entropy(h, W, labels, where=where, chunk_size=CHUNK)
  grad = jax.jit(jax.grad(lambda h: jnp.sum(per_token(h))))(H)
  assert np.isnan(grad[4]).all() and not np.isnan(np.delete(grad, 4, 0)).any()
  np.testing.assert_array_equal(grad[~where], 0.0)
  _, tangent = jax.jit(lambda h: jax.jvp(per_token, (h,), (jnp.ones_like(h),)))(H)
  assert np.isnan(tangent[4]) and not np.isnan(np.delete(tangent, 4)).any()
  np.testing.assert_array_equal(tangent[~where], 0.0)


def test_leading_batch_dimensions_and_vmap():
  h, labels = H[:12].reshape(3, 4, D), Y[:12].reshape(3, 4)
  flat = xent_jax.linear_cross_entropy(H[:12], W, Y[:12], chunk_size=CHUNK)
  batched = xent_jax.linear_cross_entropy(h, W, labels, chunk_size=CHUNK)
  mapped = jax.vmap(lambda a, b: xent_jax.linear_cross_entropy(a, W, b, chunk_size=CHUNK))(h, labels)
  chex.assert_trees_all_close(batched, flat.reshape(3, 4), atol=1e-6)
  chex.assert_trees_all_close(mapped, flat.reshape(3, 4), atol=1e-6)


# Forward mode and second order on a small problem, nested blocks with remainders.
n, d, v = 6, 4, 40
SMALL = {"h": RNG.normal(size=(n, d)), "w": RNG.normal(size=(d, v)) / 2, "y": RNG.integers(0, v, n)}
SMALL_OPTIONS = {"label_smoothing": 0.2, "z_loss": 1e-3, "softcap": 3.0}


def _small_losses(dtype=np.float32):
  """Weighted per-token losses on the small problem: the fused kernel's and the naive composition's."""
  weight = np.linspace(0.5, 2.0, n).astype(dtype)
  fused = lambda h, w: weight * xent_jax.linear_cross_entropy(h, w, SMALL["y"], chunk_size=(4, 16), **SMALL_OPTIONS)
  return fused, lambda h, w: weight * _naive(h, w, SMALL["y"], SMALL_OPTIONS)


def test_forward_mode_equals_reverse_mode():
  """jacfwd == jacrev == the naive composition's, and jax.linearize's tangent == the naive jvp."""
  h, w = SMALL["h"].astype(np.float32), SMALL["w"].astype(np.float32)
  fused, naive = _small_losses()
  forward = jax.jit(jax.jacfwd(fused, (0, 1)))(h, w)
  _close(forward, jax.jit(jax.jacrev(fused, (0, 1)))(h, w), rtol=1e-5)
  _close(forward, jax.jit(jax.jacfwd(naive, (0, 1)))(h, w))
  tangents = (np.ones_like(h), w[::-1].copy())
  _, linear = jax.linearize(jax.jit(fused), h, w)
  _close(jax.jit(linear)(*tangents), jax.jit(lambda h, w, *t: jax.jvp(naive, (h, w), t)[1])(h, w, *tangents))


def test_second_order_against_float64_naive():
  """jax.hessian (jacfwd of jacrev: jvp of grad) in float64 equals the naive composition's to 1e-9,
  every block of it (∂²/∂h², ∂²/∂h∂W, ∂²/∂W²)."""
  with jax.enable_x64(True):
    h, w = SMALL["h"], SMALL["w"]
    fused, naive = (lambda h, w, f=f: jnp.sum(f(h, w)) for f in _small_losses(np.float64))
    hessian = lambda f: jax.jit(jax.hessian(f, (0, 1)))(h, w)
    _close(hessian(fused), hessian(naive), rtol=1e-9)


DTYPE_PAIRS = [("float32", "float32"), ("bfloat16", "bfloat16"), ("bfloat16", "float32"), ("float32", "bfloat16")]


@pytest.mark.parametrize(("h_dtype", "w_dtype"), DTYPE_PAIRS)
def test_gradients_at_least_as_accurate_as_the_naive_composition(h_dtype, w_dtype):
  """Every dtype pair, bf16 embeddings with float32 master weights included: the fused gradients'
  error against float64 on the same input values is no larger than that of the naive h @ W, which
  computes in the promoted dtype. Losses in float32, gradients in the inputs' dtypes."""
  h, w = jnp.asarray(H, h_dtype), jnp.asarray(W, w_dtype)
  h64, w64 = np.asarray(h, np.float64), np.asarray(w, np.float64)
  g = (ref.softmax(h64 @ w64) - np.eye(V)[Y]) * U[:, None]
  want = (g @ w64.T, h64.T @ g)
  error = lambda grads: [
    np.abs(np.asarray(x, np.float64) - y).max() / np.abs(y).max() for x, y in zip(grads, want, strict=True)
  ]
  wide = jnp.float32 if h_dtype != w_dtype else h.dtype
  naive = lambda h, w: jnp.sum(
    U * xent_jax.softmax_cross_entropy_with_integer_labels(h.astype(wide) @ w.astype(wide), Y)
  )
  fused = lambda h, w: jnp.sum(U * xent_jax.linear_cross_entropy(h, w, Y, chunk_size=CHUNK))
  value, grads = jax.jit(jax.value_and_grad(fused, (0, 1)))(h, w)
  chex.assert_type([value, *grads], [jnp.float32, h.dtype, w.dtype])
  naive_error = error(jax.jit(jax.grad(naive, (0, 1)))(h, w))
  for got, naive_got in zip(error(grads), naive_error, strict=True):
    assert got <= naive_got + 1e-6, (error(grads), naive_error)


def _loop_outputs(jaxpr):
  """(dtype, shape) of every while/scan output in ``jaxpr`` and the jaxprs inside it."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("while", "scan"):
      yield from ((str(v.aval.dtype), v.aval.shape) for v in eqn.outvars)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _loop_outputs(sub)


def test_reverse_mode_accumulates_in_float32():
  """bf16 inputs: the transposed walk carries dX as float32 [N, D] and, over the token blocks,
  each chunk of dW as float32 [D, chunk]."""
  h, w = H.astype(jnp.bfloat16), W.astype(jnp.bfloat16)
  grad = jax.grad(lambda h, w: jnp.sum(U * xent_jax.linear_cross_entropy(h, w, Y, chunk_size=BLOCKS)), (0, 1))
  carried = set(_loop_outputs(jax.make_jaxpr(grad)(h, w).jaxpr))
  assert {("float32", (N, D)), ("float32", (D, BLOCKS[1]))} <= carried, carried


def test_jit_traces_once_and_never_holds_the_logits():
  """Reverse mode (the transposed tangent walk) and forward mode hold blocks, never N×V."""
  n, d, v = 256, 32, 4096

  @jax.jit
  @chex.assert_max_traces(n=1)
  def loss(h, w, y):
    return jax.value_and_grad(lambda h, w: jnp.sum(xent_jax.linear_cross_entropy(h, w, y, chunk_size=512)), (0, 1))(
      h, w
    )

  h = jnp.ones((n, d), jnp.float32)
  w = jnp.ones((d, v), jnp.float32)
  y = jnp.zeros(n, jnp.int32)
  for _ in range(2):
    loss(h, w, y)
  per_token = lambda h, w: xent_jax.linear_cross_entropy(h, w, y, chunk_size=512)
  jvp = lambda h, w: jax.jvp(per_token, (h, w), (h, w))
  for fn in (loss, jax.jit(jvp)):
    temp = (
      fn.lower(h, w, y).compile().memory_analysis().temp_size_in_bytes
      if fn is loss
      else fn.lower(h, w).compile().memory_analysis().temp_size_in_bytes
    )
    assert temp < n * v * 4 / 2, temp  # less than half of one float32 N×V array


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_blocks_hold_16_mib_at_a_262144_vocabulary(reduction):
  """Compiled (not run) value_and_grad at V = 262144: the temporaries are a few 16 MiB blocks and
  N×D float32 arrays, not 128 tokens' full rows (128 MiB a block)."""
  n, d, v = 1024, 64, 262144
  h, w = jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32)
  y = jax.ShapeDtypeStruct((n,), jnp.int32)
  fn = lambda h, w, y: jnp.sum(xent_jax.linear_cross_entropy(h, w, y, reduction=reduction))
  temp = jax.jit(jax.value_and_grad(fn, (0, 1))).lower(h, w, y).compile().memory_analysis().temp_size_in_bytes
  assert temp <= 4 * _linear._BLOCK_BYTES + 4 * n * d * 4, temp / 2**20


def test_block_shapes():
  """At most 16 MiB of float32 logits a block for every number of tokens and vocabulary size."""
  for tokens in (1, 100, 8192, 10**6):
    for vocab in (1000, 32768, 50257, 262144):
      rows, classes = _linear._block_shape(tokens, vocab, None)
      assert 1 <= rows <= tokens and 1 <= classes <= vocab
      assert rows * classes * 4 <= _linear._BLOCK_BYTES
  assert _linear._block_shape(8192, 131072, None) == (8192, 512)  # 8192 × 512 float32 = 16 MiB
  assert _linear._block_shape(10**6, 262144, None) == (32768, 128)
  assert _linear._block_shape(13, 300, 64) == (13, 64)
  assert _linear._block_shape(13, 300, (4, 1000)) == (4, 300)


def test_batch_axis_name_needs_a_scalar_reduction():
  with pytest.raises(ValueError, match="batch_axis_name"):
    xent_jax.linear_cross_entropy(H, W, Y, batch_axis_name="x")
  with pytest.raises(ValueError, match="chunk_size"):
    xent_jax.linear_cross_entropy(H, W, Y, chunk_size=(4, 0))
