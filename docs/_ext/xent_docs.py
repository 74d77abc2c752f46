"""Sphinx extension for the xent_jax docs: the API pages, the Derivations page, equation links, notebooks.

- ``.. xent-api:: MODULE`` documents every name in ``MODULE.__all__`` (a
  table of their one-line summaries, then one entry per name), so a new
  public name cannot be left out of the reference.
- ``.. xent-derivations::`` writes the Derivations page from
  ``xent_jax.derivations.REGISTRY``: every seed equation in LaTeX with its
  claim, the checks that cover it and the errors they measured in float32 and
  float64, the seed's slips marked "corrected". The errors come from
  ``python -m xent_jax --json``, started in a subprocess when the build
  begins so it runs beside the rest of the build, or from the JSON file named
  by ``XENT_JAX_DERIVATIONS_JSON`` (the docs test makes it while the
  notebooks execute).
- Every "Eq. 4.2.x" (ranges and lists too) and "4.4" in a docstring becomes a
  link to that equation on the Derivations page (``autodoc-process-docstring``),
  outside math, literals and doctests; in the Markdown pages too
  (``source-read``), outside code.
- The notebooks are copied from ``notebooks/`` into ``docs/notebooks/``, with
  their data, for myst-nb to execute; or, already executed, from the folder
  named by ``XENT_JAX_EXECUTED_NOTEBOOKS`` (the docs test's), and then
  ``conf.py`` turns execution off.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import types

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

import seed_equations

ROOT = pathlib.Path(__file__).resolve().parents[2]
LOGGER = logging.getLogger(__name__)
JAX_DOCS = "https://docs.jax.dev/en/latest/_autosummary/{}.html"


def _rst(directive: SphinxDirective, lines: list[str]) -> list[nodes.Node]:
  """Parses generated reStructuredText (titles allowed) into nodes."""
  node = nodes.section()
  node.document = directive.state.document
  nested_parse_with_titles(directive.state, StringList(lines, "<xent_docs>"), node)
  return node.children


# The API pages ---------------------------------------------------------------------------

JAX_MODULES = ("jax.nn", "jax.numpy", "jax.scipy.special")  # where a re-exported function is public in JAX


def _summary(obj) -> str:
  """The first paragraph of a docstring (its one-line summary), equation numbers linked."""
  doc = inspect.getdoc(obj) or ""
  return _link_numbers(" ".join(doc.split("\n\n")[0].split()))


class PublicApi(SphinxDirective):
  """``.. xent-api:: xent_jax.info``: every name in the module's ``__all__``."""

  required_arguments = 1

  def run(self) -> list[nodes.Node]:
    name = self.arguments[0]
    module = importlib.import_module(name)
    self.env.note_dependency(module.__file__)
    summary = [".. list-table::", "   :widths: 35 65", ""]
    entries = []
    for public in module.__all__:
      obj = getattr(module, public)
      if isinstance(obj, types.ModuleType):
        continue  # submodules have pages of their own
      summary += [f"   * - :py:obj:`~{name}.{public}`", f"     - {_summary(obj)}"]
      if callable(obj) and not obj.__module__.startswith("xent_jax"):
        entries += self._reexport(name, public, obj)
      elif inspect.isclass(obj):
        entries += [f".. autoclass:: {name}.{public}", "   :members:", ""]
      elif callable(obj):
        entries += [f".. autofunction:: {name}.{public}", ""]
      else:
        entries += [f".. autodata:: {name}.{public}", "   :no-value:", ""]
    return _rst(self, [*summary, "", *entries])

  @staticmethod
  def _reexport(module: str, public: str, obj) -> list[str]:
    """A function xent_jax re-exports from JAX, with a pointer to JAX's documentation."""
    source = next(f"{m}.{public}" for m in JAX_MODULES if getattr(importlib.import_module(m), public, None) is obj)
    return [
      f".. py:function:: {public}{inspect.signature(obj)}",
      f"   :module: {module}",
      "",
      f"   {_summary(obj)}",
      "",
      f"   ``{source}``, re-exported unchanged so that ``import xent_jax as losses`` covers it;"
      f" see `its documentation in JAX <{JAX_DOCS.format(source)}>`__.",
      "",
    ]


# The Derivations page --------------------------------------------------------------------


def _report_path(app) -> pathlib.Path:
  given = os.environ.get("XENT_JAX_DERIVATIONS_JSON")
  return pathlib.Path(given) if given else pathlib.Path(app.doctreedir) / "derivations.json"


def start_report(app, env, docnames: list[str]) -> None:
  """Starts the derivation report in a subprocess and reads the Derivations page last, so they overlap."""
  if "derivations" not in docnames or os.environ.get("XENT_JAX_DERIVATIONS_JSON"):
    return
  docnames.remove("derivations")
  docnames.append("derivations")
  path = _report_path(app)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.unlink(missing_ok=True)
  app._xent_report = subprocess.Popen(
    [sys.executable, "-m", "xent_jax", "--json", str(path)], stdout=subprocess.DEVNULL, cwd=ROOT
  )


def always_reread(app, env, added, changed, removed) -> list[str]:
  """The Derivations page measures the library as it is now, so it is rebuilt every time."""
  return ["derivations"]


def _load_report(app) -> list[dict]:
  """The report's rows; ``python -m xent_jax`` exits 1 when a check fails, but writes them all first."""
  proc = getattr(app, "_xent_report", None)
  if proc is not None:
    proc.wait()
  path = _report_path(app)
  if not path.exists():
    raise RuntimeError(f"the derivation report wrote no {path} (python -m xent_jax exited {proc and proc.returncode})")
  return json.loads(path.read_text())


def _equation_label(k: int | str) -> str:
  return f"eq-4.2.{k}" if isinstance(k, int) or k.isdigit() else "eq-4.4"


def _fmt(row: dict) -> str:
  return f"{row['max_error']:.2e} (tol. {row['tolerance']:.1e})"


def _status(pair: list[dict]) -> str:
  if not all(r["passed"] for r in pair):
    return "**FAIL**"
  return "pass, seed corrected" if pair[0]["note"] else "pass"


def _equation_links(equation: str) -> str:
  """ "4.2.26–4.2.28" as links to each equation it names."""
  if equation == "4.4":
    return ":ref:`4.4 <eq-4.4>`"
  return re.sub(r"4\.2\.(\d+)", lambda m: f":ref:`{m.group(0)} <{_equation_label(int(m.group(1)))}>`", equation)


def _math(latex: str, indent: str = "") -> list[str]:
  return [f"{indent}.. math::", "", f"{indent}   {latex}", ""]


class Derivations(SphinxDirective):
  """``.. xent-derivations::``: the seed's equations, each with the registry checks that cover it."""

  def run(self) -> list[nodes.Node]:
    from xent_jax import derivations

    self.env.note_dependency(derivations.__file__)
    checks = derivations.REGISTRY
    report = _load_report(self.env.app)
    if [(r["equation"], r["claim"]) for r in report[::2]] != [(c.equation, c.claim) for c in checks]:
      raise self.error("the derivation report's rows do not match xent_jax.derivations.REGISTRY")
    pairs = [report[2 * i : 2 * i + 2] for i in range(len(checks))]
    failed = [c.equation for c, pair in zip(checks, pairs, strict=True) if not all(r["passed"] for r in pair)]
    if failed:
      LOGGER.warning("derivation checks failed: %s", ", ".join(failed), location=self.get_location())
    covering = {k: [i for i, c in enumerate(checks) if k in c.numbers()] for k in range(1, 48)}
    covering["4.4"] = [i for i, c in enumerate(checks) if c.equation == "4.4"]
    noted = {k for k in range(1, 48) if any(checks[i].note for i in covering[k])}
    if not set(seed_equations.CORRECTED) <= noted or any(
      not c.numbers() & set(seed_equations.CORRECTED) for c in checks if c.note
    ):
      LOGGER.warning(
        "seed_equations.CORRECTED (%s) and the registry's seed-corrected checks (%s) disagree",
        sorted(seed_equations.CORRECTED),
        sorted(noted),
        location=self.get_location(),
      )

    lines = self._report_table(checks, pairs)
    for number, title, members in seed_equations.SECTIONS:
      lines += [f"Section {number}: {title}", "=" * 80, ""]
      for k in members:
        lines += self._equation(k, *seed_equations.EQUATIONS[k], checks, pairs, covering[k])
    lines += ["Section 4.4 (announced): InfoNCE and attention", "=" * 80, ""]
    lines += self._equation("4.4", *seed_equations.INFONCE, checks, pairs, covering["4.4"])
    lines += self._checks(checks, pairs)
    return _rst(self, lines)

  @staticmethod
  def _report_table(checks, pairs) -> list[str]:
    flat = [r for pair in pairs for r in pair]
    lines = [
      "The report",
      "=" * 80,
      "",
      f"{sum(r['passed'] for r in flat)} of {len(flat)} checks passed ({len(checks)} checks, each in float32 and"
      f" float64), measured while these pages were built ({_platform()}). Errors are ``max |a - b| / (1 + |b|)``;"
      " each check's"
      " tolerance is a few ulps of the dtype times the length and conditioning of the computation.",
      "",
      ".. list-table::",
      "   :header-rows: 1",
      "   :widths: 14 50 18 18 10",
      "",
      "   * - equation",
      "     - claim",
      "     - float32 error",
      "     - float64 error",
      "     - status",
    ]
    for i, (chk, pair) in enumerate(zip(checks, pairs, strict=True)):
      lines += [
        f"   * - {_equation_links(chk.equation)}",
        f"     - :ref:`{_escape(chk.claim)} <check-{i + 1}>`",
        f"     - {_fmt(pair[0])}",
        f"     - {_fmt(pair[1])}",
        f"     - {_status(pair)}",
      ]
    return [*lines, ""]

  @staticmethod
  def _equation(k, claim, latex, checks, pairs, covering) -> list[str]:
    name = f"4.2.{k}" if isinstance(k, int) else k
    lines = [f".. _{_equation_label(k)}:", "", f"Eq. {name}", "-" * 40, "", _escape(claim), ""]
    lines += _math(latex)
    if k in seed_equations.CORRECTED:
      notes = sorted({checks[i].note for i in covering if checks[i].note})
      lines += [".. admonition:: Corrected", "   :class: warning", ""]
      lines += [f"   {_escape(_sentence(note))}" for note in notes] + [""]
      lines += ["   As checked:", "", *_math(seed_equations.CORRECTED[k], "   ")]
    lines += ["Checked by:", ""]
    for i in covering:
      pair = pairs[i]
      lines += [
        f"- :ref:`{_escape(checks[i].claim)} <check-{i + 1}>` ({checks[i].equation}):"
        f" float32 {_fmt(pair[0])}, float64 {_fmt(pair[1])}, {_status(pair)}"
      ]
    return [*lines, ""]

  @staticmethod
  def _checks(checks, pairs) -> list[str]:
    lines = [
      "The checks",
      "=" * 80,
      "",
      "Each check's source, as registered in ``xent_jax/_derivations.py``: it receives a seeded"
      " ``numpy.random.Generator`` and the dtype and returns the largest error and the tolerance it is held to.",
      "",
    ]
    for i, (chk, pair) in enumerate(zip(checks, pairs, strict=True)):
      source = textwrap.dedent(inspect.getsource(chk.run))
      lines += [f".. _check-{i + 1}:", "", f"Check {i + 1}: {chk.equation}", "-" * 40, ""]
      lines += [f"{_escape(chk.claim)} (equations {_equation_links(chk.equation)})", ""]
      lines += [f"float32 {_fmt(pair[0])}, float64 {_fmt(pair[1])}: {_status(pair)}.", ""]
      if chk.note:
        lines += [_escape(_sentence(chk.note)), ""]
      lines += [".. code-block:: python", ""] + [f"   {line}" for line in source.splitlines()] + [""]
    return lines


def _platform() -> str:
  import jax

  backend, kind = jax.default_backend(), jax.devices()[0].device_kind
  return f"jax {jax.__version__} on {backend.upper()}" + ("" if kind.lower() == backend else f", {kind}")


def _sentence(text: str) -> str:
  return f"{text[0].upper()}{text[1:]}."


def _escape(text: str) -> str:
  """Plain text for reStructuredText: backslash the characters that start markup."""
  return re.sub(r"([*`|_\\<>])", r"\\\1", text)


# Equation links in docstrings ----------------------------------------------------------------

_NUMBER = re.compile(r'(?:Eq\. )?4\.2\.(\d+)|(?<=")4\.4(?=")|(?<=section )4\.4\b')
_LITERAL = re.compile(r"(``.+?``|:\w+:`[^`]*`|\{\w+\}`[^`]*`|`[^`]*`_*)")


def _link_numbers(text: str, role: str = ":ref:") -> str:
  """Links the equation numbers in a line of prose (outside literals and roles).

  A leading "Eq. " goes into the link's text.

  In reStructuredText (``role=":ref:"``) a bar is escaped too: the docstrings
  write plain-text mathematics, where ``|b|`` is an absolute value, not a
  substitution. MyST's role is ``{ref}``.
  """

  def link(m: re.Match) -> str:
    label = _equation_label(int(m.group(1))) if m.group(1) else "eq-4.4"
    return f"{role}`{m.group(0)} <{label}>`"

  def prose(part: str) -> str:
    return _NUMBER.sub(link, part.replace("|", r"\|") if role == ":ref:" else part)

  parts = _LITERAL.split(text)
  return "".join(part if i % 2 else prose(part) for i, part in enumerate(parts))


def link_markdown_equations(app, docname: str, source: list[str]) -> None:
  """The same links in the Markdown pages (the guides), outside code blocks."""
  if app.env.doc2path(docname).suffix != ".md":
    return
  lines, fenced = source[0].split("\n"), False
  for i, line in enumerate(lines):
    if line.lstrip().startswith("```"):
      fenced = not fenced
    elif not fenced:
      lines[i] = _link_numbers(line, "{ref}")
  source[0] = "\n".join(lines)


def link_equations(app, what, name, obj, options, lines: list[str]) -> None:
  """Rewrites the seed's equation numbers in a docstring into links to the Derivations page.

  The docstrings write plain-text mathematics, so ``|b|`` (an absolute value)
  is escaped rather than read as a substitution.

  Skips indented blocks after a line ending in ``::`` or a directive (math,
  code), and doctest blocks (from ``>>>`` to the next blank line).
  """
  verbatim_indent = None
  in_doctest = False
  for i, line in enumerate(lines):
    stripped = line.strip()
    indent = len(line) - len(line.lstrip())
    if verbatim_indent is not None:
      if not stripped or indent > verbatim_indent:
        continue
      verbatim_indent = None
    if in_doctest:
      in_doctest = bool(stripped)
      continue
    if stripped.startswith(">>>"):
      in_doctest = True
      continue
    if stripped.endswith("::"):
      verbatim_indent = indent
      if stripped.startswith(".. "):
        continue
    lines[i] = _link_numbers(line)


# Notebooks ------------------------------------------------------------------------------------


def copy_notebooks(app, config) -> None:
  """Puts the notebooks (and their data) in ``docs/notebooks``, leaving unchanged copies untouched."""
  source = pathlib.Path(os.environ.get("XENT_JAX_EXECUTED_NOTEBOOKS") or ROOT / "notebooks")
  target = pathlib.Path(app.srcdir) / "notebooks"
  for path in sorted(source.glob("*.ipynb")) + sorted((ROOT / "notebooks" / "data").glob("*")):
    dest = target / path.relative_to(source if path.suffix == ".ipynb" else ROOT / "notebooks")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists() or dest.read_bytes() != path.read_bytes():
      shutil.copyfile(path, dest)


def setup(app):
  app.add_directive("xent-api", PublicApi)
  app.add_directive("xent-derivations", Derivations)
  app.connect("config-inited", copy_notebooks)
  app.connect("env-get-outdated", always_reread)
  app.connect("env-before-read-docs", start_report)
  app.connect("autodoc-process-docstring", link_equations)
  app.connect("source-read", link_markdown_equations)
  return {"parallel_read_safe": False, "parallel_write_safe": True}
