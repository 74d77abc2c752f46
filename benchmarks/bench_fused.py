"""value_and_grad of the fused cross-entropies against optax, the naive chain and the exp floor.

  python benchmarks/bench_fused.py [--n 4096] [--c 32768] [--dtype float32]

Each function is jitted, run once to compile, then timed three times in a row
(best of three) with the order of the functions rotated each round; the table
gives the median over six rounds, as ratios to the exp floor (one elementwise
exp over the logits: read once, write once). Temporary memory comes from
``jax.jit(f).lower(...).compile().memory_analysis()``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import xent_jax


def _sum(loss):
  return lambda z, y: jnp.sum(loss(z, y))


def _naive(z, labels):
  log_p = jnp.log(jax.nn.softmax(z.astype(jnp.float32), axis=-1))
  return -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", type=int, default=4096)
  parser.add_argument("--c", type=int, default=32768)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--rounds", type=int, default=6)
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(args.n, args.c)), args.dtype)
  labels = jnp.asarray(rng.integers(0, args.c, args.n))
  soft = jax.nn.softmax(jnp.asarray(rng.normal(size=(args.n, args.c)), args.dtype), axis=-1)

  grad = lambda f: jax.value_and_grad(_sum(f))
  cases = {
      "exp floor": (lambda z, y: jnp.exp(z), labels),
      "xent int v&g": (grad(xent_jax.softmax_cross_entropy_with_integer_labels), labels),
      "optax int v&g": (grad(optax.losses.softmax_cross_entropy_with_integer_labels), labels),
      "naive int v&g": (grad(_naive), labels),
      "xent soft v&g": (grad(xent_jax.softmax_cross_entropy), soft),
      "optax soft v&g": (grad(optax.losses.softmax_cross_entropy), soft),
      "xent int value": (_sum(xent_jax.softmax_cross_entropy_with_integer_labels), labels),
      "optax int value": (_sum(optax.losses.softmax_cross_entropy_with_integer_labels), labels),
  }
  compiled, temp = {}, {}
  for name, (f, y) in cases.items():
    c = jax.jit(f).lower(z, y).compile()
    temp[name] = c.memory_analysis().temp_size_in_bytes
    compiled[name] = (c, y)
    jax.block_until_ready(c(z, y))

  times: dict[str, list[float]] = {name: [] for name in cases}
  names = list(cases)
  for r in range(args.rounds):
    for name in names[r % len(names):] + names[: r % len(names)]:
      c, y = compiled[name]
      best = float("inf")
      for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(c(z, y))
        best = min(best, time.perf_counter() - t0)
      times[name].append(best)

  med = {name: statistics.median(t) for name, t in times.items()}
  floor = med["exp floor"]
  print(f"device: {jax.devices()[0].device_kind}, logits {args.n}×{args.c} {args.dtype}")
  print(f"{'function':<16} {'ms':>9} {'× floor':>8} {'× optax':>8} {'temp MiB':>9}")
  for name in cases:
    ref = {"int v&g": "optax int v&g", "soft v&g": "optax soft v&g", "int value": "optax int value"}
    base = next((v for k, v in ref.items() if name.endswith(k)), None)
    vs = f"{med[name] / med[base]:8.2f}" if base else f"{'':>8}"
    print(f"{name:<16} {med[name] * 1e3:9.2f} {med[name] / floor:8.2f} {vs} {temp[name] / 2**20:9.1f}")


if __name__ == "__main__":
  main()
