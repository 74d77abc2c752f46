"""``python -m xent_jax bench``: the fused losses against optax, the naive chain and two floors.

For each logits shape (rows × classes) and dtype every function is jitted and
compiled once, then timed in rounds: in each round every function runs three
times in a row (best of three; a run of a function faster than 2 ms is as
many calls back to back as fill 2 ms), the order rotated from round to round; a
function's time in a run is the median over rounds. Ratios are taken within
one run only. With ``--repeat k`` the whole suite is timed k times (the runs
interleaved over the shapes, each run timing every shape in turn) and each
row reports the median over the runs of its time and ratios, and the
min–max of each ratio over the runs.

Two floors, functions of the logits alone:

* memory floor: ``z * 2 + 1``, one elementwise fusion that reads the logits
  once and writes a new array of their shape and dtype once (XLA can neither
  elide it nor write in place, the input not being donated). Every
  value_and_grad pays at least this, since it returns an N×C gradient; its
  bytes moved (2 × the logits' size) over its time is the measured bandwidth,
  which includes the page faults of a freshly allocated output (on XLA:CPU a
  large share of the time: an output above glibc's 32 MiB mmap threshold is
  new memory on every call).
* exp floor: ``jnp.exp(z)``, the same read and write with one exp per logit.

Temporary memory is ``jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from xent_jax import _classification as xent
from xent_jax import _contrastive, _linear

# (rows, classes): a small head, a 1000-class layer, and a 32k vocabulary from one sequence to 4096 tokens.
SHAPES = ((128, 10), (1024, 1000), (32, 32768), (512, 32768), (4096, 32768))
MEMORY_FLOOR, EXP_FLOOR = "memory floor", "exp floor"

# A loss of (logits, labels) and a function to time with its arguments.
Loss = Callable[[jax.Array, jax.Array], jax.Array]
Timed = dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]


@dataclasses.dataclass(frozen=True)
class Row:
  """One function at one shape and dtype; times and ratios are medians over the runs."""

  shape: str
  dtype: str
  function: str
  baseline: str | None
  ms: float
  ns_per_logit: float
  vs_memory_floor: float | None
  vs_exp_floor: float | None
  vs_baseline: float | None
  vs_baseline_min: float | None
  vs_baseline_max: float | None
  temp_mib: float
  runs: int
  gb_per_s: float | None = None  # memory floor rows: bytes read and written per second


def _naive_int(z: jax.Array, labels: jax.Array) -> jax.Array:
  log_p = jnp.log(jax.nn.softmax(z.astype(jnp.float32), axis=-1))
  return -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]


def _naive_soft(z: jax.Array, p: jax.Array) -> jax.Array:
  return -jnp.sum(p * jnp.log(jax.nn.softmax(z.astype(jnp.float32), axis=-1)), axis=-1)


def _total(loss: Loss) -> Loss:
  return lambda z, y: jnp.sum(loss(z, y))


def _value_and_grad(loss: Loss) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  return jax.value_and_grad(_total(loss))


# name -> (function of (logits, labels), label kind, baseline name)
CASES: dict[str, tuple[Callable[[jax.Array, jax.Array], Any], str, str | None]] = {
  MEMORY_FLOOR: (lambda z, y: z * 2 + 1, "int", None),
  EXP_FLOOR: (lambda z, y: jnp.exp(z), "int", None),
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


def parse_shapes(text: str) -> list[tuple[int, int]]:
  """'128x10,4096x32768' -> [(128, 10), (4096, 32768)]."""
  shapes = []
  for item in text.split(","):
    rows, _, classes = item.strip().lower().partition("x")
    if not (rows.isdigit() and classes.isdigit() and int(rows) > 0 and int(classes) > 0):
      raise ValueError(f"--shapes wants ROWSxCLASSES items such as 512x32768, got {item!r}")
    shapes.append((int(rows), int(classes)))
  return shapes


def _inputs(shape: tuple[int, int], dtype: str, seed: int = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
  key_z, key_y, key_p = jax.random.split(jax.random.key(seed), 3)
  z = jax.random.normal(key_z, shape, jnp.float32).astype(dtype)
  labels = jax.random.randint(key_y, shape[:1], 0, shape[1])
  soft = jax.nn.softmax(jax.random.normal(key_p, shape, jnp.float32), axis=-1).astype(dtype)
  return z, {"int": labels, "soft": soft}


# A timed run of a function lasts at least this long: a call that takes less
# is repeated back to back (the time of a call is then the run's over the
# calls), so that a small shape's microseconds are not lost in the timer's
# and the scheduler's noise.
_MIN_RUN_SECONDS = 2e-3


def _calls_per_run(fn: Callable[..., Any], args: tuple[Any, ...]) -> int:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return max(1, round(_MIN_RUN_SECONDS / (time.perf_counter() - start)))


def time_compiled(compiled: Timed, rounds: int) -> dict[str, float]:
  """Median over rounds of the best of three consecutive runs, order rotated per round (a run of
  a fast function is several calls back to back, see ``_MIN_RUN_SECONDS``)."""
  names = list(compiled)
  calls = {name: _calls_per_run(*compiled[name]) for name in names}
  times: dict[str, list[float]] = {name: [] for name in names}
  for r in range(rounds):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      fn, args = compiled[name]
      best = float("inf")
      for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls[name]):
          out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / calls[name])
      times[name].append(best)
  return {name: statistics.median(t) for name, t in times.items()}


def _temp_mib(compiled: jax.stages.Compiled) -> float:
  """The compiled function's temporary memory in MiB (NaN where the backend does not report it)."""
  memory = compiled.memory_analysis()
  return float("nan") if memory is None else memory.temp_size_in_bytes / 2**20


def compile_with_memory(fn: Callable[..., Any], *args: Any) -> tuple[jax.stages.Compiled, float]:
  """The compiled function and its temporary memory in MiB."""
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  return compiled, _temp_mib(compiled)


def _summarize(
  shape: str,
  dtype: str,
  z: jax.Array,
  bases: dict[str, str | None],
  temp: dict[str, float],
  runs: list[dict[str, float]],
) -> list[Row]:
  """Rows from per-run times (seconds): medians over the runs, and the min–max of the baseline ratio."""

  def ratios(name: str, base: str) -> list[float]:
    return [t[name] / t[base] for t in runs]

  rows = []
  for name, base in bases.items():
    seconds = statistics.median(t[name] for t in runs)
    vs_base = ratios(name, base) if base in runs[0] else None
    rows.append(
      Row(
        shape,
        dtype,
        name,
        base,
        seconds * 1e3,
        seconds / z.size * 1e9,
        statistics.median(ratios(name, MEMORY_FLOOR)),
        statistics.median(ratios(name, EXP_FLOOR)),
        statistics.median(vs_base) if vs_base else None,
        min(vs_base) if vs_base else None,
        max(vs_base) if vs_base else None,
        temp[name],
        len(runs),
        2 * z.nbytes / seconds / 1e9 if name == MEMORY_FLOOR else None,
      )
    )
  return rows


def run(
  shapes: list[tuple[int, int]], dtypes: list[str], rounds: int, only: str | None = None, repeat: int = 1
) -> list[Row]:
  """The fused-loss suite: every shape and dtype compiled once, then all of them timed, ``repeat`` times over."""
  chosen = {k: v for k, v in CASES.items() if only is None or only in k or k in (MEMORY_FLOOR, EXP_FLOOR)}
  setups: list[tuple[str, str, jax.Array, Timed, dict[str, float]]] = []
  for dtype in dtypes:
    for shape in shapes:
      z, labels = _inputs(shape, dtype)
      compiled: Timed = {}
      temp: dict[str, float] = {}
      for name, (fn, kind, _) in chosen.items():
        c, temp[name] = compile_with_memory(fn, z, labels[kind])
        compiled[name] = (c, (z, labels[kind]))
      setups.append((f"{shape[0]}×{shape[1]}", dtype, z, compiled, temp))
  runs: list[list[dict[str, float]]] = [[] for _ in setups]
  for _ in range(repeat):
    for setup, times in zip(setups, runs, strict=True):
      times.append(time_compiled(setup[3], rounds))
  bases = {name: base for name, (_, _, base) in chosen.items()}
  return [
    row
    for (shape, dtype, z, _, temp), times in zip(setups, runs, strict=True)
    for row in _summarize(shape, dtype, z, bases, temp, times)
  ]


# Linear cross-entropy: (N, D, V, dtype, timed). The timed shape is run; the
# large one (the naive composition would need 11 GiB) is only compiled.
LINEAR_SHAPES = ((2048, 512, 32768, "float32", True), (8192, 2048, 131072, "bfloat16", False))


def _linear_cases(labels: jax.Array) -> dict[str, tuple[Loss, str | None]]:
  def naive(h: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.mean(
      optax.losses.softmax_cross_entropy_with_integer_labels(
        jnp.matmul(h, w, preferred_element_type=jnp.float32), labels
      )
    )

  return {
    "naive linear v&g": (naive, None),
    "xent linear v&g": (lambda h, w: jnp.mean(_linear.linear_cross_entropy(h, w, labels)), "naive linear v&g"),
    "xent linear mean v&g": (
      lambda h, w: _linear.linear_cross_entropy(h, w, labels, reduction="mean"),
      "naive linear v&g",
    ),
  }


def _plain_row(
  shape: str, dtype: str, name: str, base: str | None, ms: float, per: float, ratio: float | None, temp: float
) -> Row:
  """A row of the linear and InfoNCE suites: one run, no floors."""
  return Row(shape, dtype, name, base, ms, ms * 1e6 / per, None, None, ratio, None, None, temp, 1)


def run_linear(rounds: int) -> list[Row]:
  """value_and_grad (w.r.t. embeddings and classifier) of the fused linear CE against matmul + optax."""
  rows = []
  for n, d, v, dtype, timed in LINEAR_SHAPES:
    keys = jax.random.split(jax.random.key(0), 3)
    labels = jax.random.randint(keys[2], (n,), 0, v)
    h: jax.Array | jax.ShapeDtypeStruct
    w: jax.Array | jax.ShapeDtypeStruct
    if timed:
      h = jax.random.normal(keys[0], (n, d), jnp.float32).astype(dtype)
      w = (jax.random.normal(keys[1], (d, v), jnp.float32) / d**0.5).astype(dtype)
    else:
      h, w = jax.ShapeDtypeStruct((n, d), dtype), jax.ShapeDtypeStruct((d, v), dtype)
    cases = _linear_cases(labels)
    temp: dict[str, float] = {}
    compiled: Timed = {}
    for name, (fn, _) in cases.items():
      c = jax.jit(jax.value_and_grad(fn, (0, 1))).lower(h, w).compile()
      temp[name] = _temp_mib(c)
      if timed:
        jax.block_until_ready(c(h, w))
        compiled[name] = (c, (h, w))
    med = time_compiled(compiled, rounds) if timed else {}
    for name, (_, base) in cases.items():
      ms = med[name] * 1e3 if timed else float("nan")
      ratio = med[name] / med[base] if timed and base else (temp[name] / temp[base] if base else None)
      rows.append(_plain_row(f"{n}×{d}×{v}", dtype, name, base, ms, n * v, ratio, temp[name]))
  return rows


def run_info_nce(rounds: int, batch: int = 4096, dim: int = 256) -> list[Row]:
  """value_and_grad (w.r.t. queries and keys) of in-batch InfoNCE against scores + optax's CE."""
  keys = jax.random.split(jax.random.key(0), 2)
  q = jax.random.normal(keys[0], (batch, dim))
  k = q + jax.random.normal(keys[1], (batch, dim))

  def naive(q: jax.Array, k: jax.Array) -> jax.Array:
    qn = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    kn = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(qn @ kn.T / 0.1, jnp.arange(batch)))

  cases = {
    "naive info_nce v&g": (naive, None),
    "xent info_nce v&g": (lambda q, k: jnp.mean(_contrastive.info_nce(q, k, temperature=0.1)), "naive info_nce v&g"),
  }
  compiled: Timed = {}
  temp: dict[str, float] = {}
  for name, (fn, _) in cases.items():
    c, temp[name] = compile_with_memory(jax.value_and_grad(fn, (0, 1)), q, k)
    compiled[name] = (c, (q, k))
  med = time_compiled(compiled, rounds)
  return [
    _plain_row(
      f"{batch}×{dim}",
      "float32",
      name,
      base,
      med[name] * 1e3,
      batch**2,
      med[name] / med[base] if base else None,
      temp[name],
    )
    for name, (_, base) in cases.items()
  ]


def _fmt(x: float | None, width: int) -> str:
  return f"{x:{width}.2f}" if x is not None else " " * width


def _print(rows: list[Row]) -> None:
  print(
    f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); × mem / × exp: time over the memory / exp floor"
  )
  print(
    f"{'logits':>14} {'dtype':<9} {'function':<20} {'ms':>9} {'ns/logit':>9} {'× mem':>6} {'× exp':>6}"
    f" {'× base':>7} {'min–max':>11} {'temp MiB':>9}  base"
  )
  for r in rows:
    spread = f"{r.vs_baseline_min:.2f}–{r.vs_baseline_max:.2f}" if r.runs > 1 and r.vs_baseline_min is not None else ""
    print(
      f"{r.shape:>14} {r.dtype:<9} {r.function:<20} {r.ms:9.3f} {r.ns_per_logit:9.3f} {_fmt(r.vs_memory_floor, 6)}"
      f" {_fmt(r.vs_exp_floor, 6)} {_fmt(r.vs_baseline, 7)} {spread:>11} {r.temp_mib:9.1f}  {r.baseline or ''}"
    )
  floors = [r for r in rows if r.gb_per_s is not None]
  if floors:
    print("measured bandwidth (memory floor: logits read once and written once, fresh output):")
    print("  " + ", ".join(f"{r.shape} {r.dtype} {r.gb_per_s:.1f} GB/s" for r in floors))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m xent_jax bench", description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--shapes",
    default=",".join(f"{n}x{c}" for n, c in SHAPES),
    help="logits shapes ROWSxCLASSES, comma-separated (default: %(default)s)",
  )
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument(
    "--repeat", type=int, default=1, help="time the fused suite this many times; report medians and min–max"
  )
  parser.add_argument(
    "--only", help="only the functions whose name contains this (e.g. 'int v&g'); the floors always run"
  )
  parser.add_argument("--suite", choices=("fused", "linear", "info_nce", "all"), default="all")
  parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
  args = parser.parse_args(argv)
  try:
    shapes = parse_shapes(args.shapes)
  except ValueError as e:
    parser.error(str(e))
  if args.repeat < 1 or args.rounds < 1:
    parser.error("--repeat and --rounds must be at least 1")
  rows: list[Row] = []
  if args.suite in ("fused", "all"):
    rows += run(shapes, args.dtypes.split(","), args.rounds, args.only, args.repeat)
  if args.suite in ("linear", "all"):
    rows += run_linear(args.rounds)
  if args.suite in ("info_nce", "all"):
    rows += run_info_nce(args.rounds)
  _print(rows)
  if args.json:
    with open(args.json, "w") as f:
      json.dump([dataclasses.asdict(r) for r in rows], f, indent=1)
  return 0
