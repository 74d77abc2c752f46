"""The bad-input contract: one test case per row of the table in docs/guides/bad_input.md.

Static faults raise at trace time (under `jax.eval_shape`, before any data
exists), naming the argument. Data faults under `jit` give NaN for the
examples concerned, never a finite number, and `checkify`'s float checks turn
them into an error.
"""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import xent_jax
from xent_jax import info

Z = np.zeros((2, 3), np.float32)
P = np.full((2, 3), 1 / 3, np.float32)
Y = np.zeros(2, np.int32)
E = np.zeros((2, 4), np.float32)

# (table id, call, error, argument named in the message)
STATIC = [
  ("float-labels", lambda: xent_jax.softmax_cross_entropy_with_integer_labels(Z, P[:, 0]), TypeError, "labels"),
  (
    "label-shape",
    lambda: xent_jax.softmax_cross_entropy_with_integer_labels(Z, np.zeros(3, np.int32)),
    ValueError,
    "labels",
  ),
  ("integer-logits", lambda: xent_jax.softmax_cross_entropy_with_integer_labels(Y[:, None], Y), TypeError, "logits"),
  ("scalar-logits", lambda: xent_jax.softmax_cross_entropy(np.float32(1.0), np.float32(1.0)), ValueError, "logits"),
  ("soft-label-shape", lambda: xent_jax.softmax_cross_entropy(Z, np.zeros((2, 4), np.float32)), ValueError, "labels"),
  ("axis", lambda: xent_jax.softmax_cross_entropy(Z, P, 2), ValueError, "axis"),
  ("axis-type", lambda: xent_jax.softmax_cross_entropy_with_integer_labels(Z, Y, axis=1.0), TypeError, "axis"),
  ("where-shape", lambda: xent_jax.softmax_cross_entropy(Z, P, -1, np.ones((3, 3), bool)), ValueError, "where"),
  ("kl-where-shape", lambda: xent_jax.kl_divergence(Z, P, where=np.ones(4, bool)), ValueError, "where"),
  (
    "bce-label-shape",
    lambda: xent_jax.sigmoid_binary_cross_entropy(Z[0], np.zeros(4, np.float32)),
    ValueError,
    "labels",
  ),
  (
    "pos-weight-shape",
    lambda: xent_jax.sigmoid_binary_cross_entropy(Z, P, pos_weight=np.ones(4, np.float32)),
    ValueError,
    "pos_weight",
  ),
  (
    "class-weights-shape",
    lambda: xent_jax.softmax_cross_entropy_with_integer_labels(Z, Y, class_weights=np.ones(4, np.float32)),
    ValueError,
    "class_weights",
  ),
  (
    "smoothing-range",
    lambda: xent_jax.softmax_cross_entropy_with_integer_labels(Z, Y, label_smoothing=1.5),
    ValueError,
    "label_smoothing",
  ),
  (
    "smoothing-traced",
    lambda: jax.jit(lambda e: xent_jax.cross_entropy(Z, Y, label_smoothing=e))(0.1),
    TypeError,
    "label_smoothing",
  ),
  (
    "z-loss-negative",
    lambda: xent_jax.softmax_cross_entropy_with_integer_labels(Z, Y, z_loss=-1.0),
    ValueError,
    "z_loss",
  ),
  (
    "ignore-index-type",
    lambda: xent_jax.softmax_cross_entropy_with_integer_labels(Z, Y, ignore_index=0.5),
    TypeError,
    "ignore_index",
  ),
  ("reduction", lambda: xent_jax.cross_entropy(Z, Y, reduction="avg"), ValueError, "reduction"),
  ("ce-smoothing-range", lambda: xent_jax.cross_entropy(Z, Y, label_smoothing=-0.1), ValueError, "label_smoothing"),
  ("ce-weight-shape", lambda: xent_jax.cross_entropy(Z, Y, weight=np.ones((3, 1), np.float32)), ValueError, "weight"),
  ("ce-target-dtype", lambda: xent_jax.cross_entropy(Z, np.zeros(2, bool)), TypeError, "target"),
  ("ce-prob-target-shape", lambda: xent_jax.cross_entropy(Z, P[:1]), ValueError, "target"),
  ("ce-ignore-index-probs", lambda: xent_jax.cross_entropy(Z, P, ignore_index=0), ValueError, "ignore_index"),
  ("base", lambda: info.entropy(P, base=1.0), ValueError, "base"),
  ("base-negative", lambda: info.entropy(P, base=-2.0), ValueError, "base"),
  ("base-traced", lambda: jax.jit(lambda b: info.entropy(P, base=b))(2.0), TypeError, "base"),
  ("integer-probabilities", lambda: info.entropy(np.array([1, 0])), TypeError, "p"),
  ("temperature", lambda: xent_jax.info_nce(E, E, temperature=0.0), ValueError, "temperature"),
  ("key-width", lambda: xent_jax.info_nce(E, np.zeros((2, 5), np.float32)), ValueError, "positive_key"),
  ("negative-width", lambda: xent_jax.info_nce(E, E, np.zeros((5, 3), np.float32)), ValueError, "negative_keys"),
  (
    "paired-rows",
    lambda: xent_jax.info_nce(E, E, np.zeros((3, 5, 4), np.float32), negative_mode="paired"),
    ValueError,
    "negative_keys",
  ),
  ("negative-mode", lambda: xent_jax.info_nce(E, E, negative_mode="both"), ValueError, "negative_mode"),
  ("attention-width", lambda: xent_jax.attention_weights(E, np.zeros((2, 5), np.float32)), ValueError, "key"),
  (
    "classifier-width",
    lambda: xent_jax.linear_cross_entropy(E, np.zeros((3, 5), np.float32), Y),
    ValueError,
    "classifier",
  ),
  (
    "classifier-rank",
    lambda: xent_jax.linear_cross_entropy(E, np.zeros((4, 5, 1), np.float32), Y),
    ValueError,
    "classifier",
  ),
  (
    "classifier-empty",
    lambda: xent_jax.linear_cross_entropy(E, np.zeros((4, 0), np.float32), Y),
    ValueError,
    "classifier",
  ),
  (
    "linear-labels-shape",
    lambda: xent_jax.linear_cross_entropy(E, np.zeros((4, 5), np.float32), Y[:1]),
    ValueError,
    "labels",
  ),
  (
    "linear-reduction",
    lambda: xent_jax.linear_cross_entropy(E, np.zeros((4, 5), np.float32), Y, reduction="avg"),
    ValueError,
    "reduction",
  ),
  (
    "softcap",
    lambda: xent_jax.linear_cross_entropy(E, np.zeros((4, 5), np.float32), Y, softcap=0.0),
    ValueError,
    "softcap",
  ),
  (
    "chunk-size",
    lambda: xent_jax.linear_cross_entropy(E, np.zeros((4, 5), np.float32), Y, chunk_size=0),
    ValueError,
    "chunk_size",
  ),
  ("ntxent-labels", lambda: xent_jax.ntxent(E, np.zeros(3, np.int32)), ValueError, "labels"),
]


@pytest.mark.parametrize("case, call, error, name", STATIC, ids=[c[0] for c in STATIC])
def test_static_fault_raises_at_trace_time(case, call, error, name):
  with pytest.raises(error, match=f"`{name}`"):
    jax.eval_shape(call)


_int = lambda z, y: xent_jax.softmax_cross_entropy_with_integer_labels(z, y)
_torch = lambda z, y: xent_jax.cross_entropy(z, y, reduction="none")
_soft = lambda z, p: xent_jax.softmax_cross_entropy(z, p)
_bce = lambda q, y: xent_jax.binary_cross_entropy(q, y)
_cross_entropy = lambda p, q: info.cross_entropy(p, q)
Z_NAN = np.array([[0.0, 1.0, 2.0], [np.nan, 0.0, 0.0]], np.float32)
E_RANDOM = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
TAU, TAU_BAD = np.array([0.1, 0.5], np.float32), np.array([0.1, -1.0], np.float32)


# Batches of 2¹⁵ logits (8 × 4096), row 1 faulty: there XLA:CPU runs the reductions in its library
# (YNNPACK), whose max and min drop a NaN operand, and the soft-label loss alone takes its summed path.
_RNG = np.random.default_rng(1)
Z_LARGE = _RNG.normal(size=(8, 4096)).astype(np.float32)
Y_LARGE = _RNG.integers(0, 4096, 8)
P_LARGE = _RNG.dirichlet(np.ones(4096), 8).astype(np.float32)
W_LARGE = np.broadcast_to(np.arange(4096) != 100, (8, 4096))  # keeps every class the faulty rows use


def _large(array, value, column=3):
  """A copy of ``array`` with row 1 (or its ``column``) set to ``value``."""
  out = array.copy()
  if column is None:
    out[1] = value
  else:
    out[1, column] = value
  return out


def _per_temperature(loss):
  """One loss per temperature in a batch of them (vmap), so the faulty temperature is row 1."""
  return lambda e, tau: jax.vmap(lambda t: jnp.mean(loss(e, t)))(tau)


# (table id, loss, clean arguments, faulty arguments); row 1 of the faulty batch is bad.
DATA = [
  ("label-too-large", _int, (Z, Y), (Z, np.array([0, 3]))),
  ("label-negative", _int, (Z, Y), (Z, np.array([0, -1]))),
  ("ce-label-out-of-range", _torch, (Z, Y), (Z, np.array([0, 7]))),
  ("ce-negative-label-not-ignored", _torch, (Z, Y), (Z, np.array([0, -5]))),
  ("negative-probability", _soft, (Z, P), (Z, np.array([[1.0, 0.0, 0.0], [-0.5, 1.0, 0.5]], np.float32))),
  ("ce-negative-probability", _torch, (Z, P), (Z, np.array([[1.0, 0.0, 0.0], [-0.5, 1.0, 0.5]], np.float32))),
  ("nan-logits", _int, (Z, Y), (Z_NAN, Y)),
  ("all-logits-inf", _int, (Z, Y), (np.array([[0.0, 1.0, 2.0], [-np.inf] * 3], np.float32), Y)),
  ("nan-target", _soft, (Z, P), (Z, np.array([[1.0, 0.0, 0.0], [np.nan, 1.0, 0.0]], np.float32))),
  ("large-nan-logits", _int, (Z_LARGE, Y_LARGE), (_large(Z_LARGE, np.nan), Y_LARGE)),
  ("large-soft-nan-logits", _soft, (Z_LARGE, P_LARGE), (_large(Z_LARGE, np.nan), P_LARGE)),
  ("large-all-logits-inf", _int, (Z_LARGE, Y_LARGE), (_large(Z_LARGE, -np.inf, None), Y_LARGE)),
  ("large-soft-all-logits-inf", _soft, (Z_LARGE, P_LARGE), (_large(Z_LARGE, -np.inf, None), P_LARGE)),
  ("large-negative-probability", _soft, (Z_LARGE, P_LARGE), (Z_LARGE, _large(P_LARGE, -1e-3))),
  ("large-nan-target", _soft, (Z_LARGE, P_LARGE), (Z_LARGE, _large(P_LARGE, np.nan))),
  ("nan-beside-inf", _int, (Z, Y), (np.array([[0.0, 1.0, 2.0], [np.nan, np.inf, 0.0]], np.float32), Y)),
  ("large-nan-beside-inf", _int, (Z_LARGE, Y_LARGE), (_large(_large(Z_LARGE, np.inf, 5), np.nan), Y_LARGE)),
  ("large-soft-nan-beside-inf", _soft, (Z_LARGE, P_LARGE), (_large(_large(Z_LARGE, np.inf, 5), np.nan), P_LARGE)),
  (
    "large-nan-beside-inf-masked",
    lambda z, y: xent_jax.softmax_cross_entropy_with_integer_labels(z, y, where=W_LARGE),
    (Z_LARGE, Y_LARGE),
    (_large(_large(Z_LARGE, np.inf, 5), np.nan), Y_LARGE),
  ),
  (
    "large-soft-nan-beside-inf-masked",
    lambda z, p: xent_jax.softmax_cross_entropy(z, p, where=W_LARGE),
    (Z_LARGE, P_LARGE),
    (_large(_large(Z_LARGE, np.inf, 5), np.nan), P_LARGE),
  ),
  (
    "linear-label-out-of-range",
    lambda h, y: xent_jax.linear_cross_entropy(h, np.ones((4, 3), np.float32), y),
    (E, Y),
    (E, np.array([0, 3])),
  ),
  ("probability-above-one", _bce, (P[0], P[0]), (np.array([0.5, 1.5, 0.5], np.float32), P[0])),
  ("info-negative-probability", _cross_entropy, (P, P), (np.array([[1.0, 0.0, 0.0], [-0.5, 1.0, 0.5]], np.float32), P)),
  (
    "temperature-traced",
    _per_temperature(lambda e, t: xent_jax.info_nce(e, e[::-1], temperature=t)),
    (E_RANDOM, TAU),
    (E_RANDOM, TAU_BAD),
  ),
  (
    "supcon-temperature-traced",
    _per_temperature(lambda e, t: xent_jax.supervised_contrastive(e, Y.repeat(2), temperature=t)),
    (E_RANDOM, TAU),
    (E_RANDOM, TAU_BAD),
  ),
  (
    "ntxent-temperature-traced",
    _per_temperature(lambda e, t: xent_jax.ntxent(e, np.arange(4) // 2, t)),
    (E_RANDOM, TAU),
    (E_RANDOM, np.array([0.1, np.nan], np.float32)),
  ),
]

_jitted = {case: jax.jit(fn) for case, fn, *_ in DATA}


@pytest.mark.parametrize("case, fn, clean, faulty", DATA, ids=[c[0] for c in DATA])
def test_data_fault_gives_nan_for_that_example_under_jit(case, fn, clean, faulty):
  out = np.asarray(_jitted[case](*faulty))
  assert np.isnan(out[1]), out
  assert np.all(np.isfinite(np.delete(out, 1))), out
  assert np.all(np.isfinite(_jitted[case](*clean)))
  floats = tuple(i for i, a in enumerate(faulty) if np.asarray(a).dtype.kind == "f")
  grads = jax.jit(jax.grad(lambda a, b: jnp.sum(fn(a, b)), argnums=floats))(*faulty)
  assert any(np.any(np.isnan(g)) for g in grads), grads


@pytest.mark.parametrize("case, fn, clean, faulty", DATA, ids=[c[0] for c in DATA])
def test_checkify_float_checks_report_data_faults(case, fn, clean, faulty):
  checked = checkify.checkify(_jitted[case], errors=checkify.float_checks)
  error, _ = checked(*clean)
  assert error.get() is None
  error, _ = checked(*faulty)
  with pytest.raises(checkify.JaxRuntimeError, match="nan generated"):
    error.throw()


def test_documented_table_lists_exactly_the_tested_cases():
  """Every row of the bad-input table (docs/guides/bad_input.md) is a test case here, and back."""
  page = (pathlib.Path(__file__).parents[1] / "docs" / "guides" / "bad_input.md").read_text()
  rows = [line for line in page.splitlines() if line.startswith("| ") and "`" in line.split("|")[-2]]
  listed = {name for row in rows for name in re.findall(r"`([a-z0-9-]+)`", row.split("|")[-2])}
  tested = {c[0] for c in STATIC} | {c[0] for c in DATA}
  assert listed == tested, (listed - tested, tested - listed)
