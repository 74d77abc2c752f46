"""The integer kernel's differentiated forward with the row max as its first shift.

From 2¹⁵ logits up to 16 MiB of them a value_and_grad shifts first by the row
max and the value alone by the label's logit (``xent_jax._fused._first_shift``);
above, both by the label's logit, which tests/test_large_path.py covers. Here
the whole module runs under ``_paths.max_first_path()``: the integer-label
tests of the data faults, infinite logits, masked rows, extreme inputs,
second order and ``check_grads`` again, through the max's first shift and the
cond that falls back to the careful max.
"""

import contextlib

import jax
import jax.extend.core
import jax.numpy as jnp
import pytest
from absl.testing import absltest

import xent_jax

import _paths
import test_autodiff_modes as autodiff
import test_bad_input as bad_input
import test_classification as classification
from test_properties import test_integer_labels_finite_and_exact_with_minus_inf_elsewhere  # noqa: F401

_PATH = contextlib.ExitStack()


def setup_module() -> None:
  _PATH.enter_context(_paths.max_first_path())


def teardown_module() -> None:
  _PATH.close()


@pytest.mark.parametrize("name", [name for name in autodiff.CHECK_GRADS if name.startswith("integer")])
def test_check_grads(name):
  autodiff.test_check_grads(name)


# The data faults of the integer-label loss, whose gradients must be NaN too.
_INTEGER_FAULTS = [
  row for row in bad_input.DATA if "label" in row[0] or "logits" in row[0] or row[0].endswith("beside-inf")
]


@pytest.mark.parametrize("case, fn, clean, faulty", _INTEGER_FAULTS, ids=[row[0] for row in _INTEGER_FAULTS])
def test_data_fault_gives_nan_for_that_example_under_jit(case, fn, clean, faulty):
  bad_input.test_data_fault_gives_nan_for_that_example_under_jit(case, fn, clean, faulty)


class InfiniteLogitsMaxFirstTest(classification.InfiniteLogitsTest):
  pass


class FullyMaskedRowMaxFirstTest(classification.FullyMaskedRowTest):
  pass


class SecondOrderMaxFirstTest(classification.SecondOrderTest):
  pass


def _max_before_cond(fn, *args) -> bool:
  """Whether ``fn`` takes a row max before its first cond (the first shift's), in program order:
  calls and custom rules are walked into, conds are not."""

  def primitives(jaxpr):
    for eqn in jaxpr.eqns:
      yield eqn.primitive.name
      if eqn.primitive.name != "cond":
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
          yield from primitives(sub)

  names = list(primitives(jax.make_jaxpr(fn)(*args).jaxpr))
  return "reduce_max" in names[: names.index("cond")]


class FirstShiftTest(absltest.TestCase):
  def test_the_gradient_takes_the_max_and_the_value_the_label(self):
    z, labels = jnp.zeros((3, 5)), jnp.array([0, 4, 2])
    loss = xent_jax.softmax_cross_entropy_with_integer_labels
    summed = lambda z: jnp.sum(loss(z, labels))
    assert _max_before_cond(jax.value_and_grad(summed), z)
    assert not _max_before_cond(loss, z, labels)  # the value's max is the fallback's, inside the cond
    with _paths.large_path():
      assert not _max_before_cond(jax.value_and_grad(summed), z)
