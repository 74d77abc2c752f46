"""`python -m xent_jax bench` runs and writes its rows (tiny shapes: this checks the tool, not the speed)."""

import json

import jax
import jax.numpy as jnp
import pytest

from xent_jax import __main__ as cli
from xent_jax import _bench


def test_bench_cli_writes_rows_with_floors_and_spread(tmp_path, capsys):
  out = tmp_path / "bench.json"
  argv = [
    "bench",
    "--suite",
    "fused",
    "--shapes",
    "8x16,2x64",
    "--dtypes",
    "float32",
    "--rounds",
    "1",
    "--repeat",
    "2",
    "--only",
    "int v&g",
    "--json",
    str(out),
  ]
  assert cli.main(argv) == 0
  rows = json.loads(out.read_text())
  assert {r["shape"] for r in rows} == {"8×16", "2×64"}
  names = {r["function"] for r in rows}
  assert names == {"memory floor", "exp floor", "xent int v&g", "optax int v&g", "naive int v&g"}
  assert all(r["ms"] > 0 and r["runs"] == 2 for r in rows)
  for r in rows:
    assert r["vs_memory_floor"] > 0 and r["vs_exp_floor"] > 0
    if r["baseline"] is not None:
      assert r["vs_baseline_min"] <= r["vs_baseline"] <= r["vs_baseline_max"]
  floors = [r for r in rows if r["function"] == "memory floor"]
  assert len(floors) == 2 and all(r["gb_per_s"] > 0 and r["vs_memory_floor"] == 1 for r in floors)
  printed = capsys.readouterr().out
  assert "xent int v&g" in printed and "GB/s" in printed and "min–max" in printed


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_memory_floor_is_one_read_and_one_write(dtype):
  """One fusion reading the logits and writing a new array of their shape; no input-output alias."""
  z = jax.ShapeDtypeStruct((8, 64), dtype)
  compiled = jax.jit(_bench.CASES[_bench.MEMORY_FLOOR][0]).lower(z, jax.ShapeDtypeStruct((8,), jnp.int32)).compile()
  text = compiled.as_text()
  entry = text[text.index("ENTRY") :]
  fusions = [line for line in entry.splitlines() if " fusion(" in line]
  hlo_type = {"float32": "f32", "bfloat16": "bf16"}[dtype]
  assert len(fusions) == 1 and fusions[0].split("=")[1].strip().startswith(f"{hlo_type}[8,64]")
  assert f"{hlo_type}[8,64]{{1,0}} parameter(0)" in entry and "input_output_alias" not in text
  assert compiled.memory_analysis().temp_size_in_bytes == 0


def test_shapes_are_parsed_and_bad_ones_rejected():
  assert _bench.parse_shapes("128x10, 4096X32768") == [(128, 10), (4096, 32768)]
  with pytest.raises(SystemExit):
    cli.main(["bench", "--suite", "fused", "--shapes", "128"])
