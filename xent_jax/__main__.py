"""``python -m xent_jax``: the derivation report.

Runs every registered check of seed section 4.2 in float32 and float64, prints
a table and a summary, and exits 1 if any check fails.

  python -m xent_jax                  # all checks
  python -m xent_jax --only 4.2.33    # the checks covering one equation
  python -m xent_jax --json out.json  # also write the rows as JSON
  python -m xent_jax bench [--help]   # the benchmark (see xent_jax/_bench.py)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from xent_jax import _derivations as d


def _status(rows: list[d.CheckResult]) -> str:
  if not all(r.passed for r in rows):
    return "FAIL"
  return "pass (seed corrected)" if rows[0].note else "pass"


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ["bench"]:
    from xent_jax import _bench

    return _bench.main(argv[1:])
  parser = argparse.ArgumentParser(prog="python -m xent_jax", description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", help="run only the checks covering this equation, e.g. 4.2.33")
  parser.add_argument("--json", metavar="FILE", help="write the results as a JSON list")
  args = parser.parse_args(argv)

  checks = d.select(args.only)
  if not checks:
    parser.error(f"no check covers {args.only!r}")
  start = time.perf_counter()
  rows = [[d.run_check(c, dtype) for dtype in d.DTYPES] for c in checks]
  elapsed = time.perf_counter() - start

  print(f"{'equation':<14} {'claim':<72} {'float32 err':>11} {'float64 err':>11}  status")
  for chk, pair in zip(checks, rows, strict=True):
    claim = chk.claim if len(chk.claim) <= 72 else chk.claim[:71] + "…"
    errs = " ".join(f"{r.max_error:>11.2e}" for r in pair)
    print(f"{chk.equation:<14} {claim:<72} {errs}  {_status(pair)}")
  for chk in checks:
    if chk.note:
      print(f"  {chk.equation}: {chk.note}")

  flat = [r for pair in rows for r in pair]
  passed = sum(r.passed for r in flat)
  covered = d.covered_equations(checks)
  print(
    f"\n{len(covered)} of 47 equations checked (4.2.1–4.2.47, plus the 4.4 InfoNCE rows),"
    f" {len(checks)} checks × 2 dtypes: {passed} of {len(flat)} passed in {elapsed:.1f} s"
  )
  if args.json:
    with open(args.json, "w") as f:
      json.dump([dataclasses.asdict(r) for r in flat], f, indent=1)
  return 0 if passed == len(flat) else 1


if __name__ == "__main__":
  sys.exit(main())
