"""Tests of the fused kernels again, every shape on their path of large inputs.

Most test shapes are below ``xent_jax._fused._SMALL_SIZE`` logits, so in
their own modules they test the few-pass path (the max shift, selects, no
conds). Here the whole module runs under ``_paths.large_path()`` (set up once:
the path is chosen when a function is traced, so entering and leaving it
clears JAX's caches, which costs the tests after it their compiles), and the
same tests run through the label shift, the plain sums and their conds:
test_classification's losses' options, infinite logits, masked rows and
second order, the data-fault table, the properties over extreme inputs, the
limits and ``check_grads``. Not re-run here, to keep CI's time: the dtype,
optax-signature and tracing tests, and the 8-device suite.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

import xent_jax

import _paths
import test_classification as classification
from test_autodiff_modes import test_check_grads  # noqa: F401  (collected here too)
from test_bad_input import (  # noqa: F401
  test_checkify_float_checks_report_data_faults,
  test_data_fault_gives_nan_for_that_example_under_jit,
)
from test_limits import test_value_and_gradient_are_the_limits  # noqa: F401
from test_properties import (  # noqa: F401
  test_integer_labels_finite_and_exact_with_minus_inf_elsewhere,
  test_single_class_is_zero,
  test_soft_labels_finite_and_bounded_below_by_entropy,
  test_where_masks_including_fully_masked_rows,
)

_PATH = contextlib.ExitStack()


def setup_module() -> None:
  _PATH.enter_context(_paths.large_path())


def teardown_module() -> None:
  _PATH.close()


def _jitted_variants_only(cls: type) -> type:
  """Drops chex's ``__without_jit`` variants (eager runs take the same kernel path, slower): CI's time."""
  for name in dir(cls):
    if name.endswith("__without_jit"):
      setattr(cls, name, None)  # not callable, so unittest's loader does not collect it
  return cls


@_jitted_variants_only
class FusedLossLargePathTest(classification.FusedLossTest):
  pass


class SecondOrderLargePathTest(classification.SecondOrderTest):
  pass


class InfiniteLogitsLargePathTest(classification.InfiniteLogitsTest):
  pass


class FullyMaskedRowLargePathTest(classification.FullyMaskedRowTest):
  pass


class LargePathIsTakenTest(absltest.TestCase):
  def test_a_small_call_takes_the_label_shift(self):
    """Here a 3×5 call has the label shift's cond, which the few-pass path does not."""
    labels = np.array([0, 4, 2])
    jaxpr = lambda: str(jax.make_jaxpr(xent_jax.softmax_cross_entropy_with_integer_labels)(jnp.zeros((3, 5)), labels))
    assert "cond[" in jaxpr()
    with _paths.few_pass_path():
      assert "cond[" not in jaxpr()
