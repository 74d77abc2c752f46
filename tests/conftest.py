"""Test-wide JAX configuration: strict dtype promotion, rank promotion raises."""

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng() -> np.random.Generator:
  return np.random.default_rng(0)
