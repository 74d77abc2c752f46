"""Per-device temporary memory of the losses split over 1, 2, 4 and 8 devices.

  python benchmarks/sharded_memory.py [--n 8192] [--d 2048] [--v 131072]

Simulates 8 CPU devices (set before JAX starts) and only compiles: the
numbers are ``memory_analysis().temp_size_in_bytes`` of value_and_grad, which
for a partitioned program is per device. Vocabulary parallelism throughout:

* fused CE, jit: float32 logits [N, V] sharded over V, labels replicated
  (automatic partitioning);
* linear CE, shard_map: bf16 embeddings [N, D] replicated, classifier
  [D, V] sharded over V, ``axis_name`` (the online statistics are combined
  with pmax/psum);
* naive linear, jit: matmul then optax's integer-label loss, the classifier
  sharded over V (automatic partitioning);

Each cell is "temporaries / total", total = arguments + outputs + temporaries
per device. Vocabulary parallelism splits the classifier, its gradient and the
logits; the fused kernels' temporaries are chunks of all N tokens, so they stay
flat while the total falls.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import xent_jax


def _mib(fn, *args) -> str:
  m = jax.jit(fn).lower(*args).compile().memory_analysis()
  total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
  return f"{m.temp_size_in_bytes / 2**20:.0f} / {total / 2**20:.0f}"


def _row(k: int, n: int, d: int, v: int) -> tuple[str, str, str]:
  """The three losses' memory with the vocabulary split over ``k`` devices."""
  mesh = jax.make_mesh((k,), ("x",), axis_types=(AxisType.Auto,), devices=jax.devices()[:k])
  vocab = NamedSharding(mesh, P(None, "x"))
  replicated = NamedSharding(mesh, P())
  labels = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=replicated)
  logits = jax.ShapeDtypeStruct((n, v), jnp.float32, sharding=vocab)
  h = jax.ShapeDtypeStruct((n, d), jnp.bfloat16, sharding=replicated)
  w = jax.ShapeDtypeStruct((d, v), jnp.bfloat16, sharding=vocab)

  fused = jax.value_and_grad(lambda z, y: jnp.mean(xent_jax.softmax_cross_entropy_with_integer_labels(z, y)))
  linear_local = lambda h, w, y: xent_jax.linear_cross_entropy(h, w, y, axis_name="x")
  linear = jax.shard_map(linear_local, mesh=mesh, in_specs=(P(), P(None, "x"), P()), out_specs=P())
  linear_vg = jax.value_and_grad(lambda h, w, y: jnp.mean(linear(h, w, y)), (0, 1))
  naive_vg = jax.value_and_grad(
    lambda h, w, y: jnp.mean(
      optax.losses.softmax_cross_entropy_with_integer_labels(jnp.matmul(h, w, preferred_element_type=jnp.float32), y)
    ),
    (0, 1),
  )
  return _mib(fused, logits, labels), _mib(naive_vg, h, w, labels), _mib(linear_vg, h, w, labels)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", type=int, default=8192)
  parser.add_argument("--d", type=int, default=2048)
  parser.add_argument("--v", type=int, default=131072)
  args = parser.parse_args()
  n, d, v = args.n, args.d, args.v
  print(f"per-device MiB (temporaries / total) of value_and_grad, N={n} D={d} V={v}, vocabulary split over k devices")
  print(f"{'k':>2} {'fused CE (f32 logits)':>22} {'naive linear (bf16)':>20} {'linear CE (bf16)':>17}")
  for k in (1, 2, 4, 8):
    row = _row(k, n, d, v)
    print(f"{k:>2} {row[0]:>22} {row[1]:>20} {row[2]:>17}")


if __name__ == "__main__":
  main()
