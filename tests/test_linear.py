"""linear_cross_entropy against the naive composition (matmul, then the integer-label loss).

The naive side is checked against float64 numpy first, so the fused kernel is
compared with the truth and not only with another JAX function.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xent_jax

import references as ref

N, D, V = 13, 8, 300
CHUNK = 64  # 300 = 4·64 + 44: full chunks and a remainder
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
  z = jnp.matmul(h, w, preferred_element_type=jnp.float32)
  cap = options.get("softcap")
  if cap is not None:
    z = cap * jnp.tanh(z / cap)
  rest = {k: v for k, v in options.items() if k != "softcap"}
  return xent_jax.softmax_cross_entropy_with_integer_labels(z, labels, **rest)


def _labels(options):
  return Y_IGNORED if "ignore_index" in options else Y


def test_naive_reference_is_the_float64_truth():
  got = _naive(H, W, Y, {})
  want = ref.integer_cross_entropy(H.astype(np.float64) @ W.astype(np.float64), Y)
  np.testing.assert_allclose(got, want, rtol=2e-6)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_per_example_values_and_gradients(name):
  """Loss within 1e-5 and gradients within 1e-4 relative, with a non-uniform upstream gradient."""
  options, labels = OPTIONS[name], _labels(OPTIONS[name])
  fused = lambda h, w: jnp.sum(U * xent_jax.linear_cross_entropy(h, w, labels, chunk_size=CHUNK, **options))
  naive = lambda h, w: jnp.sum(U * _naive(h, w, labels, options))
  value, grads = jax.value_and_grad(fused, (0, 1))(H, W)
  want, want_grads = jax.value_and_grad(naive, (0, 1))(H, W)
  np.testing.assert_allclose(value, want, rtol=1e-5)
  for g, wg in zip(grads, want_grads):
    np.testing.assert_allclose(g, wg, rtol=1e-4, atol=1e-4 * np.abs(wg).max())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["plain", "all"])
def test_scalar_reductions(reduction, name):
  """The token-walk kernel: gradient formed in the forward, scaled by a non-unit upstream gradient."""
  options, labels = OPTIONS[name], _labels(OPTIONS[name])
  counted = float(np.sum(labels != options.get("ignore_index", -1)))

  def naive(h, w):
    total = jnp.sum(_naive(h, w, labels, options))
    return total / counted if reduction == "mean" else total

  fused = lambda h, w: xent_jax.linear_cross_entropy(h, w, labels, chunk_size=4, reduction=reduction, **options)
  value, vjp = jax.vjp(fused, H, W)
  want, want_vjp = jax.vjp(naive, H, W)
  np.testing.assert_allclose(value, want, rtol=1e-5)
  for g, wg in zip(vjp(jnp.float32(2.5)), want_vjp(jnp.float32(2.5))):
    np.testing.assert_allclose(g, wg, rtol=1e-4, atol=1e-4 * np.abs(wg).max())


def test_where_and_bad_labels():
  where = np.arange(N) % 3 != 0
  labels = Y.copy()
  labels[4] = V  # out of range and kept: NaN
  out = xent_jax.linear_cross_entropy(H, W, labels, where=where, chunk_size=CHUNK)
  want = np.where(where, _naive(H, W, np.clip(labels, 0, V - 1), {}), 0.0)
  assert np.isnan(out[4])
  keep = np.arange(N) != 4
  np.testing.assert_allclose(out[keep], want[keep], rtol=1e-5)
  grad = jax.grad(lambda h: jnp.sum(xent_jax.linear_cross_entropy(h, W, Y, where=where, chunk_size=CHUNK)))(H)
  np.testing.assert_array_equal(grad[~where], 0.0)


def test_leading_batch_dimensions_and_vmap():
  h, labels = H[:12].reshape(3, 4, D), Y[:12].reshape(3, 4)
  flat = xent_jax.linear_cross_entropy(H[:12], W, Y[:12], chunk_size=CHUNK)
  batched = xent_jax.linear_cross_entropy(h, W, labels, chunk_size=CHUNK)
  mapped = jax.vmap(lambda a, b: xent_jax.linear_cross_entropy(a, W, b, chunk_size=CHUNK))(h, labels)
  chex.assert_trees_all_close(batched, flat.reshape(3, 4), atol=1e-6)
  chex.assert_trees_all_close(mapped, flat.reshape(3, 4), atol=1e-6)


def test_bfloat16_inputs_float32_accumulation():
  """bf16 h and W: loss in float32, gradients in bf16, matching the float32 computation on the same values."""
  h16, w16 = H.astype(jnp.bfloat16), W.astype(jnp.bfloat16)
  fn = lambda h, w: jnp.sum(U * xent_jax.linear_cross_entropy(h, w, Y, chunk_size=CHUNK))
  value, (gh, gw) = jax.value_and_grad(fn, (0, 1))(h16, w16)
  chex.assert_type([value, gh, gw], [jnp.float32, jnp.bfloat16, jnp.bfloat16])
  h32, w32 = np.asarray(h16, np.float32), np.asarray(w16, np.float32)
  want, (wh, ww) = jax.value_and_grad(lambda h, w: jnp.sum(U * _naive(h, w, Y, {})), (0, 1))(h32, w32)
  np.testing.assert_allclose(value, want, rtol=1e-5)
  # G is rounded to bf16 once before each backward matmul: a few bf16 ulps.
  np.testing.assert_allclose(np.asarray(gh, np.float32), wh, atol=2e-2 * np.abs(wh).max())
  np.testing.assert_allclose(np.asarray(gw, np.float32), ww, atol=2e-2 * np.abs(ww).max())


def test_jit_traces_once_and_never_holds_the_logits():
  n, d, v = 256, 32, 4096

  @jax.jit
  @chex.assert_max_traces(n=1)
  def loss(h, w, y):
    return jax.value_and_grad(lambda h, w: jnp.sum(xent_jax.linear_cross_entropy(h, w, y, chunk_size=512)), (0, 1))(h, w)

  h = jnp.ones((n, d), jnp.float32)
  w = jnp.ones((d, v), jnp.float32)
  y = jnp.zeros(n, jnp.int32)
  for _ in range(2):
    loss(h, w, y)
  temp = loss.lower(h, w, y).compile().memory_analysis().temp_size_in_bytes
  assert temp < n * v * 4 / 2, temp  # less than half of one float32 N×V array


def test_default_chunk_sizes():
  from xent_jax._linear import default_chunk_size

  assert default_chunk_size(8192, 131072) == 512  # 8192 × 512 float32 = 16 MiB
  assert default_chunk_size(4, 1000) == 1000
  assert default_chunk_size(10**9, 1000) == 128
