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
import numpy as np
import pytest
from absl.testing import absltest

import xent_jax

import _paths
import references
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


def test_batched_reverse_over_reverse_beside_an_infinite_logit():
  """The Hessian-vector products diag(p̂)v - p̂(p̂·v) of each row, batched as ``jacrev(grad)`` does.

  The row with a +inf logit has p̂ = e_k and a zero Hessian; its +inf entry itself is NaN here
  (as on the label path). With the shift differentiated, the max's transpose spread that NaN
  over the whole row (review of issue 15).
  """
  rng = np.random.default_rng(7)
  z = rng.standard_normal((5, 7)).astype(np.float32)
  z[2, 4] = np.inf
  labels = jnp.array([0, 3, 1, 6, 2])
  vs = rng.standard_normal((2, 5, 7)).astype(np.float32)
  grad = jax.grad(lambda z: jnp.sum(xent_jax.softmax_cross_entropy_with_integer_labels(z, labels)))
  hv = np.asarray(jax.jit(jax.vmap(lambda v: jax.vjp(grad, jnp.asarray(z))[1](v)[0]))(vs), np.float64)
  p = references.softmax(np.where(np.isinf(z), 0.0, z))
  p[2] = np.eye(7)[4]
  expected = p * vs - p * np.sum(p * vs, axis=-1, keepdims=True)
  finite = np.ones(z.shape, bool)
  finite[2, 4] = False
  np.testing.assert_allclose(hv[:, finite], expected[:, finite], rtol=1e-5, atol=1e-6)
