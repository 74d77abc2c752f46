"""Test-wide JAX configuration (strict dtype promotion, rank promotion raises) and the background jobs."""

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng() -> np.random.Generator:
  return np.random.default_rng(0)


def _waits_in_background(item: pytest.Item) -> bool:
  return getattr(item, "originalname", None) in getattr(getattr(item, "module", None), "BACKGROUND_FOR", ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  """Runs the tests that wait for a background job (below) last, so that the in-process tests run while the
  jobs do; in collection order they would block at once (the second-order cases sort second)."""
  items[:] = [item for item in items if not _waits_in_background(item)] + [
    item for item in items if _waits_in_background(item)
  ]


def pytest_collection_finish(session: pytest.Session) -> None:
  """Starts the session's slow jobs that run outside this process (the 8-device suite, the notebooks' kernels)
  as soon as collection is done, so that they overlap the in-process tests: most of a test here is a
  single-threaded XLA compile, and CI has two cores. A test module with such a job defines
  ``start_in_background()`` (idempotent) and ``BACKGROUND_FOR``, the names of its tests that wait for the
  result; the job starts only when one of those is selected."""
  if session.config.option.collectonly:
    return
  for item in session.items:
    if _waits_in_background(item):
      item.module.start_in_background()


def pytest_sessionfinish(session: pytest.Session) -> None:
  """Ends a background process that a stopped session (``-x``, Ctrl-C) no longer waits for."""
  for module in {getattr(item, "module", None) for item in session.items}:
    stop = getattr(module, "stop_in_background", None)
    if stop is not None:
      stop()
