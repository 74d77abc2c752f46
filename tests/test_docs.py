"""The documentation builds with no warning, every cross-reference resolved (`sphinx-build -W --keep-going -n`).

The build renders the notebooks `tests/test_notebooks.py` executes (once per session, shared) and the
derivation report: the rows `tests/test_derivations.py` computed earlier in the session, or, when this file
runs without it, `python -m xent_jax --json` in a subprocess while the notebooks execute.
"""

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import types

import nbformat
import pytest
import test_derivations

import xent_jax

import test_notebooks

ROOT = pathlib.Path(__file__).parents[1]


def _earlier_in_session(request: pytest.FixtureRequest, module: types.ModuleType) -> list[pytest.Item]:
  """The session's test items of `module`'s file that run before this test, checked to share its module object."""
  items = request.session.items
  theirs = [item for item in items if item.path == pathlib.Path(module.__file__)]
  assert all(item.module is module for item in theirs), (
    f"pytest imported {module.__name__} twice: its results would be computed again, not shared"
  )
  return [item for item in theirs if items.index(item) < items.index(request.node)]


def _derivation_report(request: pytest.FixtureRequest, path: pathlib.Path) -> subprocess.Popen | None:
  """Writes the registry's rows to `path` as `python -m xent_jax --json` does.

  The rows of the registry cases tests/test_derivations.py ran earlier in this session (the whole suite runs them
  first), or, if it did not run them all, the report in a subprocess, returned to be waited on.
  """
  earlier = _earlier_in_session(request, test_derivations)
  registry = [item for item in earlier if item.originalname == "test_registry_check"]
  if len(registry) == len(test_derivations.CASES):
    missing = [case for case in test_derivations.CASES if case not in test_derivations.ROWS]
    assert not missing, f"registry cases that ran without leaving a row: {missing}"
    rows = [dataclasses.asdict(test_derivations.ROWS[case]) for case in test_derivations.CASES]
    path.write_text(json.dumps(rows, indent=1))
    return None
  return subprocess.Popen([sys.executable, "-m", "xent_jax", "--json", str(path)], stdout=subprocess.DEVNULL, cwd=ROOT)


def test_docs_build_without_warnings(request, tmp_path):
  report = tmp_path / "derivations.json"
  derivations = _derivation_report(request, report)
  _earlier_in_session(request, test_notebooks)
  notebooks = tmp_path / "notebooks"
  notebooks.mkdir()
  for path, notebook in test_notebooks.executed().items():
    assert not isinstance(notebook, Exception), f"{path.name} did not run: {notebook}"
    nbformat.write(notebook, notebooks / path.name)
  assert derivations is None or derivations.wait() == 0, "the derivation report failed"

  env = dict(os.environ, XENT_JAX_DERIVATIONS_JSON=str(report), XENT_JAX_EXECUTED_NOTEBOOKS=str(notebooks))
  html = tmp_path / "html"
  build = subprocess.run(
    [
      sys.executable,
      "-m",
      "sphinx",
      "-W",
      "--keep-going",
      "-n",
      "-q",
      "-b",
      "html",
      "-d",
      str(tmp_path / "doctrees"),
      "docs",
      str(html),
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
  )
  assert build.returncode == 0, build.stderr[-6000:]

  page = (html / "derivations.html").read_text()
  anchors = set(re.findall(r'id="(eq-4-[24][-\d]*)"', page))
  assert anchors == {f"eq-4-2-{k}" for k in range(1, 48)} | {"eq-4-4"}
  assert page.count("Corrected") >= 3, "the seed's three slips are marked"
  api = (html / "api" / "xent_jax.html").read_text()
  assert 'href="../derivations.html#eq-4-2-37"' in api, "docstring citations link to the Derivations page"
  for module in (xent_jax, xent_jax.info, xent_jax.closed_forms, xent_jax.derivations):
    page = (html / "api" / f"{module.__name__.removeprefix('xent_jax.')}.html").read_text()
    public = [n for n in module.__all__ if not isinstance(getattr(module, n), types.ModuleType)]
    assert not [n for n in public if f'id="{module.__name__}.{n}"' not in page], (
      f"undocumented names in {module.__name__}"
    )
  assert "<img" in (html / "notebooks" / "07_language_model.html").read_text()


def test_equation_citations_become_links_outside_math_literals_and_doctests():
  sys.path.insert(0, str(ROOT / "docs" / "_ext"))
  import xent_docs

  lines = [
    'Seed Eq. 4.2.23, 4.2.29–4.2.31 and "4.4"; ``4.2.5`` and :math:`4.2.6` stay; |b| is an absolute value.',
    "",
    ".. math::",
    "",
    "   L = 4.2.7",
    "",
    ">>> f(4.2.8)",
    "4.2.9",
    "",
    "Eq. 4.2.10.",
  ]
  xent_docs.link_equations(None, "function", "f", None, {}, lines)
  assert lines[0] == (
    "Seed :ref:`Eq. 4.2.23 <eq-4.2.23>`, :ref:`4.2.29 <eq-4.2.29>`–:ref:`4.2.31 <eq-4.2.31>` and"
    ' ":ref:`4.4 <eq-4.4>`"; ``4.2.5`` and :math:`4.2.6` stay; \\|b\\| is an absolute value.'
  )
  assert lines[2:9] == [".. math::", "", "   L = 4.2.7", "", ">>> f(4.2.8)", "4.2.9", ""]
  assert lines[9] == ":ref:`Eq. 4.2.10 <eq-4.2.10>`."
