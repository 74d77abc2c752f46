"""Test-wide JAX configuration (strict dtype promotion, rank promotion raises) and the background jobs."""

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng() -> np.random.Generator:
  return np.random.default_rng(0)


def pytest_collection_finish(session: pytest.Session) -> None:
  """Starts the session's slow jobs that run outside this process (the 8-device suite, the notebooks' kernels)
  as soon as collection is done, so that they overlap the in-process tests: most of a test here is a
  single-threaded XLA compile, and CI has two cores. A test module with such a job defines
  ``start_in_background()`` (idempotent); its tests wait for the result."""
  for module in {getattr(item, "module", None) for item in session.items}:
    start = getattr(module, "start_in_background", None)
    if start is not None:
      start()
