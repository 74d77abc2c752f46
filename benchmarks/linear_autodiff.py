"""linear_cross_entropy in reverse and forward mode, against an earlier version of the kernel.

  python benchmarks/linear_autodiff.py [--before OLD_LINEAR.py] [--rounds 6] [--memory-only]

For the shapes of ``python -m xent_jax bench --suite linear`` it reports the
temporary memory (``memory_analysis().temp_size_in_bytes``) of value_and_grad
(per-token losses summed, and ``reduction="mean"``) and of a jvp in the
embeddings and the classifier, and times the first shape. ``--before`` loads
another ``_linear.py`` (e.g. ``git show REV:xent_jax/_linear.py > old.py``)
as a module and runs its functions in the same process, interleaved with
the current ones: every round runs each function three times in a row (best
of three), the order rotated per round, and the table gives the median and
the spread (min–max) over rounds of the wall time and of the process's CPU
time (all threads), which on a shared machine does not count the time other
processes hold the cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import jax
import jax.numpy as jnp

from xent_jax import _linear

SHAPES = ((2048, 512, 32768, "float32", True), (8192, 2048, 131072, "bfloat16", False))


def _load(path: str):
  spec = importlib.util.spec_from_file_location("linear_before", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _cases(module, labels, tag: str, forward: bool):
  loss = module.linear_cross_entropy
  cases = {
    f"{tag} v&g per-token": jax.value_and_grad(lambda h, w: jnp.mean(loss(h, w, labels)), (0, 1)),
    f"{tag} v&g mean": jax.value_and_grad(lambda h, w: loss(h, w, labels, reduction="mean"), (0, 1)),
  }
  if forward:
    cases[f"{tag} jvp per-token"] = lambda h, w: jax.jvp(lambda h, w: jnp.mean(loss(h, w, labels)), (h, w), (h, w))
    cases[f"{tag} jvp mean"] = lambda h, w: jax.jvp(lambda h, w: loss(h, w, labels, reduction="mean"), (h, w), (h, w))
  return cases


def _time(compiled: dict, args, rounds: int) -> dict[str, list[tuple[float, float]]]:
  """Per function and round, the best of three runs' (wall, CPU) seconds; CPU time (all threads of
  this process) does not count the time other processes hold the cores."""
  names, times = list(compiled), {name: [] for name in compiled}
  for r in range(rounds):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      best = (float("inf"), float("inf"))
      for _ in range(3):
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled[name](*args))
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
      times[name].append(best)
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--before", help="path of an earlier _linear.py to compare with")
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument("--memory-only", action="store_true")
  args = parser.parse_args()
  modules = {"new": _linear}
  if args.before:
    modules = {"old": _load(args.before), **modules}
  print(f"device: {jax.devices()[0].device_kind}")
  for n, d, v, dtype, timed in SHAPES:
    keys = jax.random.split(jax.random.key(0), 3)
    labels = jax.random.randint(keys[2], (n,), 0, v)
    h = jax.ShapeDtypeStruct((n, d), dtype)
    w = jax.ShapeDtypeStruct((d, v), dtype)
    compiled = {}
    for tag, module in modules.items():
      forward = tag == "new" or hasattr(module, "block_shape")
      for name, fn in _cases(module, labels, tag, forward).items():
        compiled[name] = jax.jit(fn).lower(h, w).compile()
        temp = compiled[name].memory_analysis().temp_size_in_bytes / 2**20
        print(f"{n}×{d}×{v} {dtype:<8} {name:<22} temp {temp:8.1f} MiB")
    if timed and not args.memory_only:
      h = jax.random.normal(keys[0], (n, d), jnp.float32).astype(dtype)
      w = (jax.random.normal(keys[1], (d, v), jnp.float32) / d**0.5).astype(dtype)
      for fn in compiled.values():
        jax.block_until_ready(fn(h, w))
      times = _time(compiled, (h, w), args.rounds)
      for name, t in times.items():
        wall, cpu = ([x[i] * 1e3 for x in t] for i in (0, 1))
        print(
          f"{n}×{d}×{v} {dtype:<8} {name:<22} wall {statistics.median(wall):8.1f} ms ({min(wall):.1f}–{max(wall):.1f})"
          f"  CPU {statistics.median(cpu):8.1f} ms ({min(cpu):.1f}–{max(cpu):.1f})"
        )


if __name__ == "__main__":
  main()
