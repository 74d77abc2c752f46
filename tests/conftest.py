"""Test-wide JAX configuration (strict dtype promotion, rank promotion raises) and the background jobs."""

import jax
import numpy as np
import pytest

import _background

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


# Test files that one child session runs beside this one (tests/_background.py), their tests here reporting
# its outcomes: about half of the in-process test time (measured with --durations), so that CI's second core
# runs tests too. Not test_derivations.py and test_notebooks.py, whose results test_docs.py reuses here.
IN_CHILD = (
  "tests/test_autodiff_modes.py",
  "tests/test_classification.py",
  "tests/test_large_path.py",
  "tests/test_linear.py",
  "tests/test_pytorch.py",
)
_JOBS: list[_background.ChildSession] = []


def pytest_configure(config: pytest.Config) -> None:
  """A background job's child session gets this session's options (``_background.configure``); a child dies
  with its session."""
  _background.configure(config)
  _background.die_with_parent()


@pytest.fixture
def rng() -> np.random.Generator:
  return np.random.default_rng(0)


def _in_child(item: pytest.Item) -> bool:
  return not _background.in_child_session() and item.nodeid.partition("::")[0] in IN_CHILD


def _named_in_background_for(item: pytest.Item) -> bool:
  return getattr(item, "originalname", None) in getattr(getattr(item, "module", None), "BACKGROUND_FOR", ())


def _waits_in_background(item: pytest.Item) -> bool:
  return _named_in_background_for(item) or _in_child(item)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  """Runs the tests that wait for a background job (below) last, so that the in-process tests run while the
  jobs do; in collection order they would block at once."""
  items[:] = [item for item in items if not _waits_in_background(item)] + [
    item for item in items if _waits_in_background(item)
  ]


def pytest_collection_finish(session: pytest.Session) -> None:
  """Starts the session's slow jobs that run outside this process as soon as collection is done, so that they
  overlap the in-process tests: most of a test here is a single-threaded XLA compile, and CI has two cores.

  The jobs: the child session of the ``IN_CHILD`` files, whose tests here then replay its outcomes; and a
  test module's own (the 8-device suite, the notebooks' kernels), where the module defines
  ``start_in_background()`` (idempotent) and ``BACKGROUND_FOR``, the names of its tests that wait for the
  result. A job starts only when one of its tests is selected.
  """
  if session.config.option.collectonly:
    return
  delegated = [item for item in session.items if _in_child(item)]
  if delegated:
    job = _background.ChildSession([item.nodeid for item in delegated])
    _JOBS.append(job)
    for item in delegated:
      job.delegate(item)
  for item in session.items:
    if _named_in_background_for(item):
      item.module.start_in_background()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
  _background.record(report)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
  """With ``--durations N``, the child session's N slowest tests too (their call phase)."""
  count = config.option.durations
  for job in _JOBS:
    outcomes = vars(job).get("outcomes")  # None where no test waited for the child
    if count is None or not isinstance(outcomes, dict):
      continue
    slowest = sorted(outcomes.items(), key=lambda kv: -float(kv[1][2]))[: count or None]
    terminalreporter.write_sep("=", f"slowest {len(slowest)} durations in the child session")
    for nodeid, (_, _, seconds) in slowest:
      terminalreporter.write_line(f"{seconds}s call     {nodeid}")


def pytest_sessionfinish(session: pytest.Session) -> None:
  """Ends a background process that a stopped session (``-x``, Ctrl-C) no longer waits for; a child session
  writes its outcomes."""
  _background.write_report()
  for job in _JOBS:
    _background.stop(job.process)
  for module in {getattr(item, "module", None) for item in session.items}:
    stop = getattr(module, "stop_in_background", None)
    if stop is not None:
      stop()
