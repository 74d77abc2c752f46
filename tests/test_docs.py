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

import jax
import nbformat
import pytest

import xent_jax

import test_derivations
import test_notebooks

ROOT = pathlib.Path(__file__).parents[1]
# The build renders the executed notebooks: their execution starts when collection finishes (tests/conftest.py).
start_in_background = test_notebooks.start_in_background
BACKGROUND_FOR = ("test_docs_build_without_warnings",)


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
  performance = (html / "guides" / "performance.html").read_text()
  table = [line for line in _readme_section("Performance").splitlines() if line.startswith("| ")]
  rows = [line.split("|")[1].strip() for line in table[1:]]  # below the header
  assert len(rows) >= 5 and not [row for row in rows if f"<td><p>{row}</p></td>" not in performance], (
    "the Performance page includes the README's section"
  )


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


EXAMPLE_PAGES = [ROOT / "README.md", ROOT / "docs" / "index.md", *sorted((ROOT / "docs" / "guides").glob("*.md"))]


@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=[p.stem for p in EXAMPLE_PAGES])
def test_code_examples_run(page, capsys):
  """Every Python block of the README and the guides runs as a user would run it (JAX's default promotion)."""
  blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)
  for block in blocks:
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
      exec(compile(block, str(page), "exec"), {"__name__": "__example__"})
  printed = capsys.readouterr().out
  assert not re.search(r"\bnan\b", printed, re.I), printed
  if page.name in ("README.md", "optax.md", "multi_device.md"):
    assert blocks and printed, f"{page.name} lost its example"


def _readme_section(title: str) -> str:
  return (ROOT / "README.md").read_text().split(f"\n## {title}\n")[1].split("\n## ")[0]


def test_readme_links_resolve():
  links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
  local = [link for link in links if "://" not in link]
  assert len(local) >= 15, local
  assert not [link for link in local if not (ROOT / link).exists()]


def test_readme_names_every_public_function():
  section = _readme_section("The losses")
  public = [*xent_jax.__all__, *(f"info.{n}" for n in xent_jax.info.__all__)]
  named = set(re.findall(r"`([\w.]+)`", section))
  named |= {name.split(".")[0] for name in named}  # `info.entropy` names the module info too
  assert not [name for name in public if name not in named]


def test_every_notebook_is_listed():
  notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
  for listing, prefix in [("README.md", "notebooks/"), ("docs/examples.md", "notebooks/"), ("notebooks/README.md", "")]:
    text = (ROOT / listing).read_text()
    assert not [n for n in notebooks if f"]({prefix}{n})" not in text], f"notebooks missing from {listing}"
