"""``python -m xent_jax bench``: the fused losses against optax, the naive chain and the floor.

For each size and dtype every function is jitted and compiled once, then timed
in rounds: in each round every function runs three times in a row (best of
three), the order rotated from round to round; a function's time is the
median over rounds. The floor is one elementwise ``jnp.exp`` over the logits
(read once, exp, write once). Temporary memory is
``jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes``.
Ratios are taken within one run only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from xent_jax import _classification as xent
from xent_jax import _contrastive, _linear

NUM_CLASSES = 32768


@dataclasses.dataclass(frozen=True)
class Row:
  size: str
  dtype: str
  function: str
  baseline: str | None
  ms: float
  ns_per_logit: float
  vs_floor: float
  vs_baseline: float | None
  temp_mib: float


def _naive_int(z, labels):
  log_p = jnp.log(jax.nn.softmax(z.astype(jnp.float32), axis=-1))
  return -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]


def _naive_soft(z, p):
  return -jnp.sum(p * jnp.log(jax.nn.softmax(z.astype(jnp.float32), axis=-1)), axis=-1)


def _total(loss: Callable) -> Callable:
  return lambda z, y: jnp.sum(loss(z, y))


def _value_and_grad(loss: Callable) -> Callable:
  return jax.value_and_grad(_total(loss))


# name -> (function of (logits, labels), label kind, baseline name)
CASES: dict[str, tuple[Callable, str, str | None]] = {
    "exp floor": (lambda z, y: jnp.exp(z), "int", None),
    "xent int value": (_total(xent.softmax_cross_entropy_with_integer_labels), "int", "optax int value"),
    "optax int value": (_total(optax.losses.softmax_cross_entropy_with_integer_labels), "int", None),
    "xent int v&g": (_value_and_grad(xent.softmax_cross_entropy_with_integer_labels), "int", "optax int v&g"),
    "optax int v&g": (_value_and_grad(optax.losses.softmax_cross_entropy_with_integer_labels), "int", None),
    "naive int v&g": (_value_and_grad(_naive_int), "int", "optax int v&g"),
    "xent soft value": (_total(xent.softmax_cross_entropy), "soft", "optax soft value"),
    "optax soft value": (_total(optax.losses.softmax_cross_entropy), "soft", None),
    "xent soft v&g": (_value_and_grad(xent.softmax_cross_entropy), "soft", "optax soft v&g"),
    "optax soft v&g": (_value_and_grad(optax.losses.softmax_cross_entropy), "soft", None),
    "naive soft v&g": (_value_and_grad(_naive_soft), "soft", "optax soft v&g"),
}


def _inputs(num_logits: int, dtype: str, seed: int = 0):
  rows = max(1, num_logits // NUM_CLASSES)
  key_z, key_y, key_p = jax.random.split(jax.random.key(seed), 3)
  z = jax.random.normal(key_z, (rows, NUM_CLASSES), jnp.float32).astype(dtype)
  labels = jax.random.randint(key_y, (rows,), 0, NUM_CLASSES)
  soft = jax.nn.softmax(jax.random.normal(key_p, (rows, NUM_CLASSES), jnp.float32), axis=-1).astype(dtype)
  return z, {"int": labels, "soft": soft}


def time_compiled(compiled: dict[str, tuple[Callable, tuple]], rounds: int) -> dict[str, float]:
  """Median over rounds of the best of three consecutive runs, order rotated per round."""
  names = list(compiled)
  times: dict[str, list[float]] = {name: [] for name in names}
  for r in range(rounds):
    for name in names[r % len(names):] + names[: r % len(names)]:
      fn, args = compiled[name]
      best = float("inf")
      for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
      times[name].append(best)
  return {name: statistics.median(t) for name, t in times.items()}


def compile_with_memory(fn: Callable, *args) -> tuple[Callable, float]:
  """The compiled function and its temporary memory in MiB."""
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  return compiled, compiled.memory_analysis().temp_size_in_bytes / 2**20


def run(sizes: list[int], dtypes: list[str], rounds: int, only: str | None = None) -> list[Row]:
  rows = []
  for dtype in dtypes:
    for size in sizes:
      z, labels = _inputs(size, dtype)
      chosen = {k: v for k, v in CASES.items() if only is None or only in k or k == "exp floor"}
      compiled, temp = {}, {}
      for name, (fn, kind, _) in chosen.items():
        c, temp[name] = compile_with_memory(fn, z, labels[kind])
        compiled[name] = (c, (z, labels[kind]))
      med = time_compiled(compiled, rounds)
      floor = med["exp floor"]
      label = f"{size / 2**20:g}M"
      for name, (_, _, base) in chosen.items():
        ratio = med[name] / med[base] if base in med else None
        rows.append(Row(label, dtype, name, base, med[name] * 1e3, med[name] / z.size * 1e9, med[name] / floor, ratio, temp[name]))
  return rows


# Linear cross-entropy: (N, D, V, dtype, timed). The timed shape is run; the
# large one (the naive composition would need 11 GiB) is only compiled.
LINEAR_SHAPES = ((2048, 512, 32768, "float32", True), (8192, 2048, 131072, "bfloat16", False))


def _linear_cases(labels):
  def naive(h, w):
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(jnp.matmul(h, w, preferred_element_type=jnp.float32), labels))

  return {
      "naive linear v&g": (naive, None),
      "xent linear v&g": (lambda h, w: jnp.mean(_linear.linear_cross_entropy(h, w, labels)), "naive linear v&g"),
      "xent linear mean v&g": (lambda h, w: _linear.linear_cross_entropy(h, w, labels, reduction="mean"), "naive linear v&g"),
  }


def run_linear(rounds: int) -> list[Row]:
  """value_and_grad (w.r.t. embeddings and classifier) of the fused linear CE against matmul + optax."""
  rows = []
  for n, d, v, dtype, timed in LINEAR_SHAPES:
    keys = jax.random.split(jax.random.key(0), 3)
    labels = jax.random.randint(keys[2], (n,), 0, v)
    if timed:
      h = jax.random.normal(keys[0], (n, d), jnp.float32).astype(dtype)
      w = (jax.random.normal(keys[1], (d, v), jnp.float32) / d**0.5).astype(dtype)
    else:
      h, w = jax.ShapeDtypeStruct((n, d), dtype), jax.ShapeDtypeStruct((d, v), dtype)
    cases = _linear_cases(labels)
    temp, compiled = {}, {}
    for name, (fn, _) in cases.items():
      c = jax.jit(jax.value_and_grad(fn, (0, 1))).lower(h, w).compile()
      temp[name] = c.memory_analysis().temp_size_in_bytes / 2**20
      if timed:
        jax.block_until_ready(c(h, w))
        compiled[name] = (c, (h, w))
    med = time_compiled(compiled, rounds) if timed else {}
    for name, (_, base) in cases.items():
      ms = med[name] * 1e3 if timed else float("nan")
      ratio = med[name] / med[base] if timed and base else (temp[name] / temp[base] if base else None)
      rows.append(Row(f"{n}×{d}×{v}", dtype, name, base, ms, ms * 1e6 / (n * v), float("nan"), ratio, temp[name]))
  return rows


def run_info_nce(rounds: int, batch: int = 4096, dim: int = 256) -> list[Row]:
  """value_and_grad (w.r.t. queries and keys) of in-batch InfoNCE against scores + optax's CE."""
  keys = jax.random.split(jax.random.key(0), 2)
  q = jax.random.normal(keys[0], (batch, dim))
  k = q + jax.random.normal(keys[1], (batch, dim))

  def naive(q, k):
    qn = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    kn = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(qn @ kn.T / 0.1, jnp.arange(batch)))

  cases = {
      "naive info_nce v&g": (naive, None),
      "xent info_nce v&g": (lambda q, k: jnp.mean(_contrastive.info_nce(q, k, temperature=0.1)), "naive info_nce v&g"),
  }
  compiled, temp = {}, {}
  for name, (fn, _) in cases.items():
    compiled[name], temp[name] = compile_with_memory(jax.value_and_grad(fn, (0, 1)), q, k)
    compiled[name] = (compiled[name], (q, k))
  med = time_compiled(compiled, rounds)
  return [
      Row(f"{batch}×{dim}", "float32", name, base, med[name] * 1e3, med[name] / batch**2 * 1e9, float("nan"),
          med[name] / med[base] if base else None, temp[name])
      for name, (_, base) in cases.items()
  ]


def _print(rows: list[Row]) -> None:
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {NUM_CLASSES} classes")
  print(f"{'logits':>7} {'dtype':<9} {'function':<17} {'ms':>9} {'ns/logit':>9} {'× floor':>8} {'× base':>7} {'temp MiB':>9}  base")
  for r in rows:
    ratio = f"{r.vs_baseline:7.2f}" if r.vs_baseline is not None else f"{'':>7}"
    print(
        f"{r.size:>7} {r.dtype:<9} {r.function:<17} {r.ms:9.2f} {r.ns_per_logit:9.3f} {r.vs_floor:8.2f} {ratio}"
        f" {r.temp_mib:9.1f}  {r.baseline or ''}"
    )


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m xent_jax bench", description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="1,16,128", help="logits per call in units of 2^20, comma-separated")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument("--only", help="only the functions whose name contains this (e.g. 'int v&g')")
  parser.add_argument("--suite", choices=("fused", "linear", "info_nce", "all"), default="all")
  parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
  args = parser.parse_args(argv)
  sizes = [int(float(s) * 2**20) for s in args.sizes.split(",")]
  rows = []
  if args.suite in ("fused", "all"):
    rows += run(sizes, args.dtypes.split(","), args.rounds, args.only)
  if args.suite in ("linear", "all"):
    rows += run_linear(args.rounds)
  if args.suite in ("info_nce", "all"):
    rows += run_info_nce(args.rounds)
  _print(rows)
  if args.json:
    with open(args.json, "w") as f:
      json.dump([dataclasses.asdict(r) for r in rows], f, indent=1)
  return 0
