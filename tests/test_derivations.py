"""Every registry check as its own test case, the report's CLI, and the user helper."""

import json

import jax
import jax.numpy as jnp
import pytest

from xent_jax import __main__ as cli
from xent_jax import derivations

CASES = [(c, d) for c in derivations.REGISTRY for d in ("float32", "float64")]
# Each case's row, kept for the session: tests/test_docs.py builds the Derivations page from them (in the order of
# CASES, the rows of `python -m xent_jax --json`) instead of running the registry a second time.
ROWS: dict[tuple[derivations.Check, str], derivations.CheckResult] = {}


@pytest.mark.parametrize("chk, dtype", CASES, ids=[f"{c.equation}:{i // 2}:{d}" for i, (c, d) in enumerate(CASES)])
def test_registry_check(chk, dtype):
  row = ROWS[chk, dtype] = derivations.run_check(chk, jnp.dtype(dtype))
  assert row.passed, row
  assert 0 < row.tolerance < 1e-2  # a few ulps times the problem's scale, never a loose constant


def test_every_equation_is_covered():
  assert derivations.covered_equations() == set(range(1, 48))


def test_seed_corrections_are_marked():
  notes = {c.equation: c.note for c in derivations.REGISTRY if c.note}
  assert "positive semi-definite" in notes["4.2.32–4.2.33"]
  assert "Σp" in notes["4.2.29–4.2.31"]
  assert "exp(z_i - M)" in notes["4.2.37–4.2.38"]


def test_cli_only_and_json(tmp_path, capsys):
  out = tmp_path / "report.json"
  assert cli.main(["--only", "4.2.33", "--json", str(out)]) == 0
  rows = json.loads(out.read_text())
  assert {r["dtype"] for r in rows} == {"float32", "float64"}
  assert all({"equation", "claim", "dtype", "max_error", "tolerance", "passed"} <= set(r) for r in rows)
  assert "seed corrected" in capsys.readouterr().out


def test_cli_rejects_unknown_equation():
  with pytest.raises(SystemExit):
    cli.main(["--only", "9.9.9"])


def test_check_gradient_accepts_the_truth_and_rejects_a_wrong_closed_form():
  z = jnp.linspace(-3.0, 3.0, 7)
  loss = lambda z: jnp.sum(jax.nn.softplus(z))
  assert derivations.check_gradient(loss, jax.nn.sigmoid, z).passed
  wrong = derivations.check_gradient(loss, lambda z: jax.nn.sigmoid(z) * (1 + 1e-4), z)
  assert not wrong.passed and wrong.max_error > wrong.tolerance


def test_check_gradient_jacobian_mode():
  from xent_jax import closed_forms

  z = jnp.array([0.3, -1.0, 2.0])
  row = derivations.check_gradient(jax.nn.softmax, closed_forms.softmax_jacobian, z, jacobian=True, equation="4.2.32")
  assert row.passed and row.equation == "4.2.32"


def test_the_seeds_uncorrected_gradient_fails_a_check():
  """The report can fail: p̂ - p, as the seed writes it, is wrong for unnormalised targets."""
  from xent_jax import _classification as losses

  def seed_as_written(rng, dtype):
    z = jnp.asarray(rng.normal(size=(4, 5)), dtype)
    p = 3 * jax.nn.softmax(jnp.asarray(rng.normal(size=(4, 5)), dtype))
    grad = jax.grad(lambda z: jnp.sum(losses.softmax_cross_entropy(z, p)))(z)
    return derivations.error(grad, jax.nn.softmax(z) - p), derivations.ulps(dtype, 64)

  row = derivations.run_check(derivations.Check("4.2.30", "p̂ - p for any p", seed_as_written), jnp.float32)
  assert not row.passed and row.max_error > 0.1
