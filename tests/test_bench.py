"""`python -m xent_jax bench` runs and writes its rows (tiny sizes: this checks the tool, not the speed)."""

import json

from xent_jax import __main__ as cli


def test_bench_cli_writes_rows(tmp_path, capsys):
  out = tmp_path / "bench.json"
  code = cli.main(["bench", "--suite", "fused", "--sizes", "0.0625", "--dtypes", "float32", "--rounds", "1", "--only", "int", "--json", str(out)])
  assert code == 0
  rows = json.loads(out.read_text())
  names = {r["function"] for r in rows}
  assert {"exp floor", "xent int v&g", "optax int v&g", "naive int v&g"} <= names
  assert all(r["ms"] > 0 for r in rows)
  assert "xent int v&g" in capsys.readouterr().out
