"""linear_cross_entropy on 8 devices: the global mean under data parallelism, forward mode in shard_map.

Values, gradients and tangents equal the single-device ones within 1e-5.
"""

import functools

import jax
import numpy as np
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import xent_jax

DEVICES = 8
TOL = {"rtol": 1e-5, "atol": 1e-5}
RNG = np.random.default_rng(7)
N, D, V = 24, 8, 256  # 3 tokens per device
H = RNG.normal(size=(N, D)).astype(np.float32)
W = (RNG.normal(size=(D, V)) / 2).astype(np.float32)
Y = RNG.integers(0, V, N).astype(np.int32)
Y[[1, 13]] = -100  # ignored
# Tokens kept per device: 3, 2, 1, 0, 3, 1, 2, 3 (before the two ignored ones).
WHERE = np.arange(N) % 3 < np.array([3, 2, 1, 0, 3, 1, 2, 3]).repeat(3)
OPTIONS = {"ignore_index": -100, "label_smoothing": 0.1, "z_loss": 1e-3}


def _mesh():
  return jax.make_mesh((DEVICES,), ("x",), axis_types=(AxisType.Auto,))


def _close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL), a, b)


def _global_mean(chunk):
  """The mean over tokens split over "x" (classifier replicated), with batch_axis_name="x"."""
  local = lambda h, w, y, where: xent_jax.linear_cross_entropy(
    h, w, y, where=where, reduction="mean", chunk_size=chunk, batch_axis_name="x", **OPTIONS
  )
  return jax.shard_map(local, mesh=_mesh(), in_specs=(P("x"), P(), P("x"), P("x")), out_specs=P())


def test_global_mean_with_unequal_counts():
  """batch_axis_name="x": Σ losses / Σ counts over the devices, value and gradients as on one device,
  where the mean of the devices' means is off."""
  chunk = 64
  single = lambda h, w: xent_jax.linear_cross_entropy(
    h, w, Y, where=WHERE, reduction="mean", chunk_size=chunk, **OPTIONS
  )
  sharded = lambda h, w: _global_mean(chunk)(h, w, Y, WHERE)
  want = jax.jit(jax.value_and_grad(single, (0, 1)))(H, W)
  _close(jax.jit(jax.value_and_grad(sharded, (0, 1)))(H, W), want)
  local = lambda h, w, y, where: xent_jax.linear_cross_entropy(
    h, w, y, where=where, reduction="mean", chunk_size=chunk, **OPTIONS
  )
  mean_of_means = jax.jit(
    jax.shard_map(
      lambda *args: jax.lax.pmean(local(*args), "x"),
      mesh=_mesh(),
      in_specs=(P("x"), P(), P("x"), P("x")),
      out_specs=P(),
    )
  )(H, W, Y, WHERE)
  assert abs(float(mean_of_means) / float(want[0]) - 1) > 0.05


def test_forward_mode_inside_shard_map():
  """jvp through shard_map: the vocabulary split (axis_name) and the data-parallel global mean."""
  tangents = (np.ones_like(H), W[:, ::-1].copy())
  per_token = lambda h, w, axis_name=None: xent_jax.linear_cross_entropy(
    h, w, Y, chunk_size=16, axis_name=axis_name, **OPTIONS
  )
  vocab_split = jax.shard_map(
    functools.partial(per_token, axis_name="x"), mesh=_mesh(), in_specs=(P(), P(None, "x")), out_specs=P()
  )
  jvp = lambda f: jax.jit(lambda h, w, dh, dw: jax.jvp(f, (h, w), (dh, dw)))(H, W, *tangents)
  _close(jvp(vocab_split), jvp(per_token))
  single = lambda h, w: xent_jax.linear_cross_entropy(h, w, Y, where=WHERE, reduction="mean", **OPTIONS)
  sharded = lambda h, w: _global_mean(None)(h, w, Y, WHERE)
  _close(jvp(sharded), jvp(single))
