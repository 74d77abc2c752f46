"""The fused softmax cross-entropy (seed Eq. 4.2.35–4.2.40), in forward and reverse mode.

Both kernels work on the last axis of ``logits`` (callers move the class axes
there) and are a ``jax.custom_jvp`` built by ``_fused_loss``:

* The rule's primal computes, per row, a shift M and log s = log Σ exp(z - M),
  and the loss from them, never forming log p̂ = z - logsumexp(z) at the scale
  of z (so large logits lose no precision to cancellation). M is the row max
  (Eq. 4.2.35); the integer-label kernel first tries the label's logit, which
  needs one pass over the logits instead of two (see ``_label_shifted``).
  Below 2¹⁵ logits both kernels take a few-pass path instead (``_small``):
  the max shift, and selects in place of conds.
* The tangent is Σ_k (∂L/∂z_k) ż_k plus the labels' or class weights' terms,
  with ∂L/∂z = p̂·Σq - q (Eq. 4.2.29–4.2.31, 4.2.40) from the row factors of
  ``_core``, and p̂ = exp((z - M) - log s) recomputed from the logits (kept
  apart rather than as z - logsumexp(z), which would lose the low bits of
  log s next to a large M). The tangent map is linear in the tangents and
  sits under ``jax.checkpoint``, so reverse mode, which transposes it, keeps
  only the inputs and the row statistics (no N×C softmax) and recomputes p̂.

One rule gives ``jax.jvp``, ``jax.jacfwd`` and ``jax.linearize`` as well as
``jax.grad`` and ``jax.jacrev``; the rule is plain differentiable JAX, so
second order (``jax.hessian``, jvp of grad) works too. Transposition also
gives the right cotangents inside ``shard_map`` (summed over the devices
that share a replicated input) with no rule of ours.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.typing import DTypeLike

from xent_jax import _checks, _core
from xent_jax._core import ClassAxis

# Below this many logits a kernel's time is its number of fused passes more
# than their work (XLA:CPU, issue 15: about 3 µs a pass beside ~10 µs a call
# at 128×10), so the kernels take fewer passes there, with selects that
# XLA:CPU's library (YNNPACK, which runs reductions from 4096 elements) does
# not take (``_small``; measured to win up to 128×256, to lose from 256×256).
# The size is per shard and per call: under ``vmap`` the unbatched one, so a
# batch of small problems takes the few-pass path too.
_SMALL_SIZE = 2**15


def _size_at_most(x: jax.Array, limit: int) -> bool:
  """Whether ``x`` is known to hold at most ``limit`` elements; False for a symbolic shape
  (``jax.export``'s polymorphic batch), whose size is not known until the call."""
  size = x.size
  return isinstance(size, int) and size <= limit


def _small(logits: jax.Array) -> bool:
  """Whether ``logits`` takes the kernels' few-pass path (see ``_SMALL_SIZE``); a symbolic
  shape takes the larger path, which is right at every size."""
  return _size_at_most(logits, _SMALL_SIZE - 1)


def _finite_top(x: jax.Array) -> jax.Array:
  """``x`` with +inf lowered to the dtype's largest finite value.

  A row with +inf logits then has M = that value, and exp(z - M) is 1 on its
  k infinite classes and 0 elsewhere: p̂ = 1/k there, the limit of the softmax,
  where z - M would be inf - inf = NaN. A no-op on every other row. Applied in
  one pass only (the exp of the max shift): the max is lowered after the
  reduction instead, since XLA:CPU stores an elementwise op that two reductions
  share as an N×C temporary.
  """
  return jnp.minimum(x, jnp.finfo(x.dtype).max)


def _infinite_row(m: jax.Array) -> jax.Array:
  """Rows whose (lowered) max marks a +inf logit (see ``_finite_top``)."""
  return m == jnp.finfo(m.dtype).max


def _exp_shifted(
  logits: jax.Array, dtype: DTypeLike, shift: jax.Array, mask: jax.Array | None, *, top: bool = False
) -> jax.Array:
  """exp(z - shift) per class in the compute dtype, 0 on masked classes; ``top`` lowers +inf
  logits first (see ``_finite_top``). The logits are converted inside the pass, so no upcast
  copy is stored."""
  y = logits.astype(dtype) - shift
  if top:
    # For a row with a +inf logit (shift = the dtype's max, see ``_row_max``)
    # z - shift is +inf on its infinite classes: lowered to 0 there, so that
    # exp(z - M) = 1 on them and 0 elsewhere, and p̂ = 1/k, the softmax's limit
    # (``_finite_top``). The cap is a per-row array: a broadcast constant that
    # two of XLA:CPU's reductions shared was stored as an N×C array (measured).
    cap = jnp.where(_infinite_row(shift), 0, jnp.inf).astype(dtype)
    # A select keeps a NaN logit's NaN where XLA:CPU's library min drops it
    # (see ``_nan_beside_inf``), but keeps the pass out of that library: for
    # the few-pass path only, which then needs no NaN test of its own.
    y = jnp.where(y > cap, cap, y) if _small(logits) else jnp.minimum(y, cap)
  return jnp.exp(y if mask is None else jnp.where(mask, y, -jnp.inf))


def _row_max(logits: jax.Array, dtype: DTypeLike, mask: jax.Array | None, class_axis: ClassAxis) -> jax.Array:
  """M, the masked row max (Eq. 4.2.35) lowered to the dtype's max (0 for a row with no finite
  max); taken in the logits' own dtype, which is exact, so the pass reads them as they are."""
  m = class_axis.max(logits if mask is None else jnp.where(mask, logits, -jnp.inf)).astype(dtype)
  m = jnp.minimum(m, jnp.finfo(dtype).max)
  return jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))


def _max_shifted(
  logits: jax.Array, dtype: DTypeLike, mask: jax.Array | None, class_axis: ClassAxis
) -> tuple[jax.Array, jax.Array]:
  """(M, s) per row with M the masked row max and s = Σ exp(z - M) (Eq. 4.2.35)."""
  m = _row_max(logits, dtype, mask, class_axis)
  return m, class_axis.sum(_exp_shifted(logits, dtype, m, mask, top=True))


def _nan_beside_inf(logits: jax.Array, mask: jax.Array | None, m: jax.Array, class_axis: ClassAxis) -> jax.Array | bool:
  """Rows, (..., 1), that hold a NaN logit beside a +inf one (M from ``_row_max``).

  There the cap min(z - M, 0) of ``_exp_shifted`` drops the NaN on XLA:CPU's
  library (YNNPACK) path, from 4096 logits up (measured, issue 15), and s
  counts it as one more +inf class. For the branches that handle +inf rows
  only, so the common batch pays nothing for it. False with a ``where`` mask:
  the select that applies it keeps those passes out of the library, whose min
  then propagates the NaN (measured; the ``large-*-masked`` rows of
  tests/test_bad_input.py hold it), and this test would store an N×C array.
  False on the few-pass path too, whose select cap keeps the NaN in s.
  """
  if mask is not None or _small(logits):
    return False
  # exp(-z²) is NaN for a NaN logit only (0 at ±inf), and a sum carries it: a
  # compare's flags were stored as an N×C array (XLA:CPU, measured). The
  # barrier'd view gives this pass its own read: a float32 copy of 16-bit
  # logits shared with the loss's pass would be stored.
  z = jax.lax.optimization_barrier(logits).astype(m.dtype)
  return _infinite_row(m) & jnp.isnan(class_axis.sum(jnp.exp(-z * z)))


def _over(a: jax.Array | float, s: jax.Array) -> jax.Array:
  """a/s, and 0 for an empty row (s = 0: every class masked), whose exps are all 0.

  The empty row divides by 1, not 0: a/0 in the where's dropped branch met its
  zero cotangent as 0·inf = NaN in second order (reverse over reverse with an
  ignored row of -inf logits; review of issue 15). A row factor that may be NaN
  (a bad label's) multiplies ``_over(1, s)`` instead, which keeps the NaN on an
  empty row.
  """
  kept = s > 0
  return jnp.where(kept, a / jnp.where(kept, s, 1), 0)


def _rows_kept(mask: jax.Array | None, class_axis: ClassAxis) -> jax.Array | bool:
  """Whether each row has a class that ``where`` keeps (True without a mask)."""
  if mask is None:
    return True
  if mask.shape[-1] == 1:  # a mask of the batch shape, the same on every shard
    return mask[..., 0]
  return class_axis.sum(mask.astype(jnp.int32))[..., 0] > 0


def _neg_log_softmax(logits: jax.Array, mask: jax.Array | None, m: jax.Array, log_s: jax.Array) -> jax.Array:
  """-log p̂ = log s - (z - M) recomputed from the logits; 0 on masked classes.

  Beside a +inf logit a finite class has p̂ = 0, so -log p̂ = +inf there.
  """
  x = _finite_top(logits.astype(m.dtype))
  nll = jnp.where(_infinite_row(m) & (x < m), jnp.inf, log_s - (x - m))
  return nll if mask is None else jnp.where(mask, nll, 0)


# 16-bit logits share their float32 exps between the forward and the tangent
# (see ``_shares_exps``) only while those fit in this many bytes.
_SHARED_16BIT_EXPS_BYTES = 2**24


def _shares_exps(logits: jax.Array) -> bool:
  """Whether the tangent map reuses the forward's exps rather than recomputing them.

  Reused, the tangent writes the same expression as the forward and its
  checkpoint lets XLA merge the two (CSE): in a value_and_grad the exps are
  computed once, into the gradient's output buffer, and scaled there in place
  (as optax's autodiff does; measured on XLA:CPU, issue 15: one exp per logit
  instead of two, and no temporary). For 16-bit logits the float32 exps would be
  an N×C temporary twice the logits' size, so above 16 MiB of them the tangent
  recomputes and writes the 16-bit gradient in one pass.
  """
  return logits.dtype.itemsize >= 4 or _size_at_most(logits, _SHARED_16BIT_EXPS_BYTES // 4)


def _recomputed_exps(logits: jax.Array, mask: jax.Array | None, shift: jax.Array) -> jax.Array:
  """exp(z - shift) recomputed from the logits (p̂ times s); 0 on masked classes."""
  # The barrier keeps XLA from merging these exps with the forward's into one
  # stored N×C buffer (CSE), which the forward would then read back.
  shift = jax.lax.optimization_barrier(shift)
  return _exp_shifted(logits, shift.dtype, shift, mask, top=True)


def _never(logits: jax.Array) -> bool:
  return False


def _fused_loss(
  forward: Callable[..., tuple[jax.Array, Any]],
  tangent: Callable[..., jax.Array],
  shares_exps: Callable[[jax.Array], bool] = _never,
  value: Callable[..., jax.Array] | None = None,
) -> jax.custom_jvp[jax.Array]:
  """A custom_jvp of (options, logits, *arrays) from a forward and a tangent map.

  ``forward(options, logits, *arrays)`` returns (loss, row statistics);
  ``tangent(options, logits, *arrays, stats, dlogits, *darrays)`` is linear in
  the d-arguments, each None where its tangent is zero (integer labels and
  masks always). ``options`` is static (hashable, ``nondiff_argnums``). The
  tangent map is rematerialized (``jax.checkpoint``); where
  ``shares_exps(logits)``, XLA may merge its recomputation with the forward's.
  ``value``, where given, computes the loss alone when nothing differentiates
  it (it needs no row statistics); it must agree with ``forward``'s loss to
  rounding.
  """

  @functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
  def loss(options: Any, logits: jax.Array, *arrays: jax.Array | None) -> jax.Array:
    if value is not None:
      return value(options, logits, *arrays)
    out: jax.Array = forward(options, logits, *arrays)[0]
    return out

  remat = {share: jax.checkpoint(tangent, static_argnums=(0,), prevent_cse=not share) for share in (False, True)}

  def jvp(options: Any, primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> tuple[jax.Array, jax.Array]:
    value, stats = forward(options, *primals)
    nonzero = [None if isinstance(t, SymbolicZero) else t for t in tangents]
    if all(t is None for t in nonzero):
      return value, jnp.zeros_like(value)
    remat_tangent = remat[bool(shares_exps(primals[0]))]
    return value, remat_tangent(options, *primals, stats, *nonzero).astype(value.dtype)

  loss.defjvp(jvp, symbolic_zeros=True)
  return loss


class IntegerOptions(NamedTuple):
  """Static options of the integer-label kernel: the CE options and the class axis."""

  ce: _core.Options = _core.Options()
  class_axis: ClassAxis = ClassAxis()


class _Label(NamedTuple):
  """Where each row's label is in this shard: its column (clipped) and whether it is here."""

  column: jax.Array
  here: jax.Array | bool


def _locate(labels: jax.Array, local_classes: int, class_axis: ClassAxis) -> _Label:
  local = labels - class_axis.offset(local_classes)
  here = (local >= 0) & (local < local_classes) if class_axis.axis_name is not None else True
  return _Label(jnp.clip(local, 0, local_classes - 1), here)


def _explicitly_sharded(x: jax.Array) -> bool:
  """Whether ``x`` carries an explicit-mode sharding (``AxisType.Explicit`` mesh axes)."""
  spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
  return spec is not None and any(axis is not None for axis in spec)


def _pick_label(x: jax.Array, label: _Label, class_axis: ClassAxis) -> jax.Array:
  """x[label] per row, shape (..., 1), summed over the shards (linear in ``x``).

  A gather, whose transpose is a scatter of the N label entries (on XLA:CPU an
  ``iota == label`` one-hot in the N×C backward cost 20% of a
  value_and_grad), except for explicitly sharded logits, where a gather's
  output sharding is ambiguous: there it is a one-hot sum, partial per shard.
  The column is clipped, so the gather takes it unsigned and promised in
  bounds: with jnp's default wrap of negative indices and NaN fill of
  out-of-bounds ones, XLA:CPU computed both per element in the exp-sum's
  fusion, which then read the labels too (one fusion more at 32×32768).
  """
  if _explicitly_sharded(x):
    iota = jax.lax.broadcasted_iota(label.column.dtype, x.shape, x.ndim - 1)
    picked = jnp.sum(jnp.where(iota == label.column[..., None], x, 0), axis=-1, keepdims=True)
  else:
    picked = jnp.take_along_axis(x, label.column[..., None].astype(jnp.uint32), axis=-1, mode="promise_in_bounds")
  if class_axis.axis_name is None:
    return picked
  return class_axis.sum(jnp.where(jnp.expand_dims(label.here, -1), picked, 0))


def _label_weight(weights: jax.Array, label: _Label, class_axis: ClassAxis) -> jax.Array:
  """w[label] per row, shape (..., 1) (linear in ``w``); with explicitly sharded labels the
  gather's output takes the labels' sharding."""
  index = label.column
  if _explicitly_sharded(index):
    picked = weights.at[index].get(out_sharding=jax.typeof(index).sharding)
  else:
    picked = weights[index]
  if class_axis.axis_name is None:
    return picked[..., None]
  return class_axis.sum(jnp.where(label.here, picked, 0)[..., None])


def _weights_row(weights: jax.Array, ndim: int) -> jax.Array:
  """Class weights shaped to broadcast against logits of rank ``ndim``."""
  return weights.reshape((1,) * (ndim - 1) + weights.shape)


def _smoothing_weights(
  weights: jax.Array | None,
  mask: jax.Array | None,
  dtype: DTypeLike,
  class_axis: ClassAxis,
  local_classes: int,
  ndim: int,
) -> jax.Array:
  """w/K on the allowed classes (1/K without weights), 0 on masked ones; K = #allowed."""
  w = jnp.ones((1,) * ndim, dtype) if weights is None else _weights_row(weights.astype(dtype), ndim)
  if mask is None:
    return w / class_axis.size(local_classes)
  if mask.shape[-1] == 1:
    return jnp.where(mask, w, 0) / class_axis.size(local_classes)
  k = jnp.maximum(class_axis.sum(mask.astype(jnp.int32)), 1).astype(dtype)
  return jnp.where(mask, w, 0) / k


_MAX_LABEL_SHIFTED_SUM = 2.0**64


def _label_logit(logits: jax.Array, label: _Label, class_axis: ClassAxis, dtype: DTypeLike) -> jax.Array:
  """z_c per row, (..., 1), in the compute dtype.

  Gathered from a barrier'd view of the logits: a gather that shares the
  logits with the exp-sum makes XLA:CPU share their float32 conversion too and
  store it (an N×C float32 copy of 16-bit logits).
  """
  return _pick_label(jax.lax.optimization_barrier(logits), label, class_axis).astype(dtype)


# The differentiated integer forward shifts by the label's logit from this many
# bytes of logits up, and by the row max below (``_first_shift``).
_LABEL_SHIFT_BYTES = 2**24


def _first_shift(
  logits: jax.Array, dtype: DTypeLike, mask: jax.Array | None, z_c: jax.Array, class_axis: ClassAxis, grad: bool
) -> jax.Array:
  """The shift ``_label_shifted`` tries first: the label's logit z_c, or for a differentiated
  forward (``grad``) of less than 16 MiB of logits, the row max, which costs a pass more.

  Measured on XLA:CPU (issue 15, a 2-core EPYC with 32 MiB of L3): while the
  logits and their gradient fit in the cache, the value_and_grad with the max
  shift ran 5-9% faster than with z_c on a quiet machine and no slower under
  load (1024×1000, 32×32768, 128×8192; the same fusions but for the max), and
  above it 9-10% slower (256×32768, 512×32768). The value alone is faster
  with z_c (0.86× against 1.03× optax's at 32×32768).

  Its derivative is stopped, which is exact: the loss and p̂ do not depend on
  the shift. Differentiated, at a +inf logit 0·exp(inf) gave the shift a NaN
  cotangent in second order, which the max's transpose spread over the row
  (reverse over reverse; review of issue 15).
  """
  if grad and _size_at_most(logits, _LABEL_SHIFT_BYTES // logits.dtype.itemsize - 1):
    z_c = _row_max(logits, dtype, mask, class_axis)
  return jax.lax.stop_gradient(z_c)


def _label_shifted(
  logits: jax.Array,
  dtype: DTypeLike,
  mask: jax.Array | None,
  first: jax.Array,
  matters: jax.Array,
  class_axis: ClassAxis,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(shift, s) with s = Σ exp(z - shift): shift = ``first`` (the label's logit z_c or the row
  max, see ``_first_shift``) when that is finite for the batch, else the careful row max M
  (Eq. 4.2.35); and whether ``first`` was taken.

  Shifting by z_c needs one pass over the logits (the max needs a second) and
  gives the loss as log s exactly, with no cancellation of M against z_c. p̂ =
  exp(z - z_c)·(1/s) is accurate to a few ulps while 1/s and the row factors
  it multiplies stay normal numbers, so the whole batch takes the max shift
  when a row's s is above 2⁶⁴ (its label's logit is 44 below its max: 1/s
  ≥ 5e-20 leaves room for class weights down to 1e-18 before a product
  flushes to 0), or is 0 or NaN where the row counts (``matters``). Under
  ``vmap`` both are computed. With a split class axis s is summed over the
  shards first, so every shard takes the same branch. The few-pass path
  (``_small``) takes the max shift with no cond: its passes cost more than
  their reads there.
  """

  def max_shifted(logits: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    # Every +inf row is here (its s is inf or NaN with the label shift); one with a NaN gets s = NaN.
    m, s = _max_shifted(logits, dtype, mask, class_axis)
    return m, _checks.nan_where(_nan_beside_inf(logits, mask, m, class_axis), s)

  if _small(logits):
    return *max_shifted(logits, mask), jnp.zeros((), bool)
  s = class_axis.sum(_exp_shifted(logits, dtype, first, mask))
  safe = jnp.all((s <= _MAX_LABEL_SHIFTED_SUM) & jnp.where(matters[..., None], s > 0, True))
  shift, s = jax.lax.cond(safe, lambda logits, mask: (first, s), max_shifted, logits, mask)
  return shift, s, safe


class _IntegerRows(NamedTuple):
  """What both the primal and the tangent of the integer kernel need per row."""

  label: _Label
  rows: _core.Rows
  label_weight: jax.Array | None  # w_c, (..., 1)
  spread: jax.Array | None  # the smoothing weights w/K, broadcastable to the logits


def _integer_rows(
  options: IntegerOptions,
  logits: jax.Array,
  labels: jax.Array,
  weights: jax.Array | None,
  mask: jax.Array | None,
  dtype: DTypeLike,
) -> _IntegerRows:
  class_axis, local = options.class_axis, logits.shape[-1]
  label = _locate(labels, local, class_axis)
  rows = _core.rows(labels, class_axis.size(local), options.ce, _rows_kept(mask, class_axis))
  label_weight = None
  if weights is not None:
    label_weight = _label_weight(weights, label, class_axis).astype(dtype)
  spread = None
  if options.ce.label_smoothing:
    spread = _smoothing_weights(weights, mask, dtype, class_axis, local, logits.ndim)
  return _IntegerRows(label, rows, label_weight, spread)


_Stats = tuple[jax.Array, jax.Array, jax.Array]


def _int_forward(
  options: IntegerOptions,
  logits: jax.Array,
  labels: jax.Array,
  weights: jax.Array | None,
  mask: jax.Array | None,
  grad: bool = True,
) -> tuple[jax.Array, _Stats]:
  """The loss per row and the row statistics; ``grad`` is False for the value alone (``_int_value``)."""
  dtype = _checks.compute_dtype(logits.dtype)
  class_axis = options.class_axis
  r = _integer_rows(options, logits, labels, weights, mask, dtype)
  # As optax: the label's logit is read unmasked, so a label on a masked class
  # gives lse_masked(z) - z_c and the gradient p̂ - onehot, which agree.
  z_c = _label_logit(logits, r.label, class_axis, dtype)
  first = _first_shift(logits, dtype, mask, z_c, class_axis, grad)
  shift, s, safe = _label_shifted(logits, dtype, mask, first, r.rows.counted & r.rows.valid, class_axis)
  rows = _core.defined(r.rows, s)
  log_s = jnp.log(s)
  label_nll = _neg_log_softmax(z_c, None, shift, log_s)
  smooth = None
  if r.spread is not None:
    nll = _neg_log_softmax(logits, mask, shift, log_s)
    smooth = class_axis.sum(jnp.where(r.spread != 0, r.spread * nll, 0))
  value = _core.loss(rows, options.ce, label_nll, shift + log_s, smooth, r.label_weight)
  return value[..., 0], (shift, s, safe)


def _int_value(
  options: IntegerOptions, logits: jax.Array, labels: jax.Array, weights: jax.Array | None, mask: jax.Array | None
) -> jax.Array:
  return _int_forward(options, logits, labels, weights, mask, grad=False)[0]


def _label_exps(
  logits: jax.Array, mask: jax.Array | None, label: _Label, class_axis: ClassAxis, shift: jax.Array, safe: jax.Array
) -> jax.Array:
  """exp(z - shift) = p̂·s for the integer kernel; where ``_shares_exps``, the forward's expression
  (its first shift's, or the careful max shift's behind a cond that the first passes through),
  so XLA computes them once."""
  if not _shares_exps(logits):
    return _recomputed_exps(logits, mask, shift)
  dtype = shift.dtype
  if _small(logits):
    return _exp_shifted(logits, dtype, shift, mask, top=True)
  first = _first_shift(logits, dtype, mask, _label_logit(logits, label, class_axis, dtype), class_axis, True)
  e = _exp_shifted(logits, dtype, first, mask)
  # The pass-through is branch 0 (taken when ``~safe`` is false): as branch 1,
  # XLA:CPU kept e out of the gradient's buffer (an N×C temporary; measured).
  exps: jax.Array = jax.lax.cond(~safe, lambda e: _exp_shifted(logits, dtype, shift, mask, top=True), lambda e: e, e)
  return exps


def _label_onehot(label: _Label, shape: tuple[int, ...]) -> jax.Array:
  """1 at each row's label in this shard, 0 elsewhere (boolean, ``shape``)."""
  iota = jax.lax.broadcasted_iota(label.column.dtype, shape, len(shape) - 1)
  onehot = iota == label.column[..., None]
  return onehot if label.here is True else onehot & jnp.expand_dims(label.here, -1)


def _int_tangent(
  options: IntegerOptions,
  logits: jax.Array,
  labels: jax.Array,
  weights: jax.Array | None,
  mask: jax.Array | None,
  stats: _Stats,
  dlogits: jax.Array | None,
  dlabels: jax.Array | None,
  dweights: jax.Array | None,
  dmask: jax.Array | None,
) -> jax.Array:
  """dL = Σ_k (p̂_k·softmax - e_c·label - spread_k)·ż_k + Σ_i (∂L/∂w_i) ẇ_i per row."""
  del dlabels, dmask  # integer labels and boolean masks have no tangent
  shift, s, safe = stats
  dtype, class_axis = shift.dtype, options.class_axis
  log_s = _core.log_total(s)
  r = _integer_rows(options, logits, labels, weights, mask, dtype)
  spread_total = None if r.spread is None else class_axis.sum(jnp.broadcast_to(r.spread, logits.shape))
  f = _core.factors(_core.defined(r.rows, s), options.ce, shift + log_s, spread_total, r.label_weight)
  out = jnp.zeros_like(shift)
  if dlogits is not None:
    dz = dlogits.astype(dtype)
    # p̂ = e/s with 1/s folded into the row factor: reverse mode then scales e
    # by one number per row, in place (a per-element 1/s kept it apart).
    e = _label_exps(logits, mask, r.label, class_axis, shift, safe)
    softmax = f.softmax * _over(1, s)
    if (logits.dtype.itemsize < 4 or _small(logits)) and not _explicitly_sharded(logits):
      # One coefficient per logit, so that reverse mode writes the gradient
      # in one pass (measured on XLA:CPU: for 16-bit logits a scatter of the
      # labels' N entries would run on a float32 N×C array before a separate
      # convert; on the few-pass path it is two more fusions).
      label = jnp.where(_label_onehot(r.label, logits.shape), f.label, 0)
      out = class_axis.sum((softmax * e - label) * dz)
    else:
      out = softmax * class_axis.sum(e * dz) - f.label * _pick_label(dz, r.label, class_axis)
    if f.spread is not None and r.spread is not None:
      out = out - f.spread * class_axis.sum(r.spread * dz)
  if dweights is not None:
    # ∂L/∂w_i = (1-ε) 1{i=c} (lse - z_c) + (ε/K) allowed_i (lse - z_i); 0 on
    # a row that does not count, whose lse - z may be infinite (0·∞ in the
    # transpose), so the coefficients are zeroed there, not the product.
    eps = options.ce.label_smoothing
    dw = dweights.astype(dtype)
    counts = f.scale != 0  # NaN for a bad label: kept, and NaN
    label_nll = _neg_log_softmax(_label_logit(logits, r.label, class_axis, dtype), None, shift, log_s)
    per_row = (1 - eps) * jnp.where(counts, label_nll, 0) * _label_weight(dw, r.label, class_axis)
    if eps:
      uniform = _smoothing_weights(None, mask, dtype, class_axis, logits.shape[-1], logits.ndim)
      nll = jnp.where(counts, _neg_log_softmax(logits, mask, shift, log_s), 0)
      per_row = per_row + eps * class_axis.sum(uniform * _weights_row(dw, logits.ndim) * nll)
    out = out + f.scale * per_row
  # A row that does not count (ignored, or kept by no ``where``) has no tangent, even with
  # a NaN logit, whose 0·NaN would otherwise reach every direction of ``jacfwd`` of a sum.
  return jnp.where(f.scale != 0, out, 0)[..., 0]


# Per-row loss over the last axis: fused_integer_labels(options, logits, labels, weights, mask);
# NaN for labels out of range that are not the ignore index, 0 for ignored rows.
fused_integer_labels = _fused_loss(_int_forward, _int_tangent, _shares_exps, _int_value)


# Soft labels: L = Σp·logsumexp(z) - Σ p·z (Eq. 4.2.23 with 4.2.37).


def _negative_nan(p: jax.Array) -> jax.Array:
  """0·√p: 0 for p ≥ 0, NaN for a negative target, in an add that needs no select.

  Constant, so its derivative is 0: the derivative of √p at p = 0 (a zero or
  masked target) is infinite, and 0·∞ made the forward's own derivative NaN,
  which second order (``check_grads``' jvp of jvp) reaches (issue 15). The
  stop is free: it leaves no op in the compiled program.
  """
  return 0 * jnp.sqrt(jax.lax.stop_gradient(p))


def _limit_loss(
  class_axis: ClassAxis,
  logits: jax.Array,
  labels: jax.Array,
  mask: jax.Array | None,
  m: jax.Array,
  log_s: jax.Array,
) -> jax.Array:
  """Σ p·(-log p̂) per row, (..., 1), with 0·∞ = 0 and the limits at ±inf logits.

  For the batches the plain sum cannot take (a -inf logit, a +inf row). In
  one pass of arithmetic with no select (XLA:CPU stores the result of a
  select inside a reduction, an N×C temporary; measured), except with a
  ``where`` mask, which a masked class's logit (NaN, say) must not reach.
  """
  dtype = m.dtype
  big = jnp.finfo(dtype).max
  x = _finite_top(logits.astype(dtype))
  p = _targets(labels, mask, dtype)
  # -log p̂ = log s - (z - M); beside a +inf logit (M = big) a finite class has
  # p̂ = 0, and big·(big - z) overflows to +inf there (0 on the infinite classes).
  nll = (log_s - (x - m)) + jnp.where(_infinite_row(m), big, 0) * jnp.minimum(big - x, big)
  if mask is not None:
    nll = jnp.where(mask, nll, 0)
  # p·(-log p̂) with -log p̂ clamped to big, so p = 0 gives 0. A class with
  # p > 0 and p̂ = 0 has min(p, nll - big) = p > 0, lifted to 1 for any
  # normal p, and adds big to its row, which then reads +inf. 0·√p is NaN for
  # a negative target.
  hit = jnp.minimum(jnp.maximum(jnp.minimum(p, nll - big), 0) / jnp.finfo(dtype).smallest_normal, 1)
  total = class_axis.sum(p * jnp.minimum(nll, big) + _negative_nan(p) + hit * big)
  total = _checks.nan_where(_nan_beside_inf(logits, mask, m, class_axis), total)
  return jnp.where(total >= big, jnp.inf, total)


class SoftOptions(NamedTuple):
  """Static options of the soft-label kernel."""

  class_axis: ClassAxis = ClassAxis()


def _soft_forward(
  options: SoftOptions, logits: jax.Array, labels: jax.Array, mask: jax.Array | None
) -> tuple[jax.Array, _Stats]:
  class_axis = options.class_axis
  dtype = _checks.compute_dtype(logits.dtype, labels.dtype)
  m, s = _max_shifted(logits, dtype, mask, class_axis)
  log_s = jnp.log(s)
  if _small(logits):
    # In one pass of selects (see ``_small``): p·(-log p̂) where p > 0 (+inf
    # where p̂ = 0), else 0 (also beside p̂ = 0), NaN for p < 0. No product
    # meets an infinite -log p̂, not even in a branch the select drops: 0·∞
    # there was reported by checkify, and XLA:CPU folds p > 0 as true for a
    # subnormal constant p that it flushes to 0 at run time (then 0·∞ = NaN).
    p = _targets(_like_logits(labels, logits), mask, dtype)
    nll = _neg_log_softmax(logits, mask, m, log_s)
    finite = nll < jnp.inf
    terms = jnp.where(p > 0, jnp.where(finite, p * jnp.where(finite, nll, 0), jnp.inf), _negative_nan(p))
    loss = class_axis.sum(terms)[..., 0]
  else:
    loss = _plain_loss(class_axis, logits, labels, mask, m, log_s)
  # A kept row with no softmax (all its logits -inf, or a NaN logit) is NaN, whatever the sums gave.
  loss = jnp.where(_rows_kept(mask, class_axis), _checks.nan_where(~_core.softmax_exists(s[..., 0]), loss), 0)
  return loss, (m, s, jnp.isnan(loss)[..., None])


def _plain_loss(
  class_axis: ClassAxis, logits: jax.Array, labels: jax.Array, mask: jax.Array | None, m: jax.Array, log_s: jax.Array
) -> jax.Array:
  """``_soft_forward``'s loss per row, (...), summed plainly where that is finite, else by ``_limit_loss``."""
  dtype = m.dtype
  # L = Σ p·(log s - y), y = z - M, non-negative terms, summed without a
  # select (XLA:CPU would store a select's N×C result). The 0·√p term is 0
  # for p ≥ 0 and NaN for a negative target, which makes that row NaN with
  # no pass of its own. The sum is NaN also where a -inf logit meets p = 0;
  # then (and for a row with a +inf logit) the batch is summed again by
  # ``_limit_loss``. (The barrier keeps XLA:CPU from
  # sharing one stored z - M, or float32 copy of 16-bit z or p, with s's pass
  # or the gradient's.)
  x, targets, shift = jax.lax.optimization_barrier((logits, labels, m))
  y = x.astype(dtype) - shift
  p = _targets(targets, mask, dtype)
  loss = class_axis.sum(p * (log_s - y) + _negative_nan(p))[..., 0]
  # The fallback takes the inputs as they are: a converted copy as an operand
  # of the cond would be stored (an N×C float32 temporary for 16-bit inputs).
  careful: jax.Array = jax.lax.cond(
    jnp.all(jnp.isfinite(loss)) & ~jnp.any(_infinite_row(m)),
    lambda *_: loss,
    lambda *args: _limit_loss(class_axis, *args)[..., 0],
    logits,
    labels,
    mask,
    m,
    log_s,
  )
  return careful


# -0.0 is the additive identity as much as 0.0 is (x + -0 = x for every x).
_NEGATIVE_ZERO = -0.0


def _add(a: jax.Array, b: jax.Array) -> jax.Array:
  return a + b


def _own_sum(x: jax.Array) -> jax.Array:
  """Σ over the last axis, (..., 1), from an initial -0.0 that no caller's sum shares.

  XLA merges equal constants (CSE), and where the 0.0 that starts these sums
  is also used outside their library (YNNPACK) fusion (the 0.0 of the caller's
  ``jnp.mean`` of the losses, say) XLA:CPU passes it to the fusion as an
  operand, and the fusion then runs about 20% slower (measured, issue 15: the
  soft value at 4096×32768, 1.30× optax's with a shared 0.0, 1.08× without).
  A reduce with a -0.0 start and a computation that is not ``lax.add`` itself
  is one JAX does not rewrite to ``reduce_sum`` (whose start is 0.0), and
  XLA:CPU fuses the -0.0 into the fusion. Only speed depends on this: the sum
  is the same either way.
  """
  total: jax.Array = jax.lax.reduce(x, jnp.array(_NEGATIVE_ZERO, x.dtype), _add, (x.ndim - 1,))
  return total[..., None]


def _soft_value(options: SoftOptions, logits: jax.Array, labels: jax.Array, mask: jax.Array | None) -> jax.Array:
  """The soft-label loss alone: ``_soft_forward``'s loss, to rounding, in fewer and simpler passes.

  Without a mask the common batch (finite logits, targets ≥ 0) is summed with
  the row max as it comes, with no select or cap: max, subtract, exp, log,
  multiply and sum only, so that XLA:CPU can run the whole loss as one library
  (YNNPACK) fusion that reads each row once (it does from 4096 rows up, as for
  optax's; measured, issue 15). A batch whose sum is not finite (a ±inf logit,
  or a negative target, which makes its row NaN) is summed again by
  ``_soft_forward``, whose limits are careful; so is any batch with a
  ``where`` mask, and any batch on the few-pass path (``_small``).
  Two differences: a logit at the dtype's largest finite value is summed here
  as the finite number it is (the differentiated forward reads it as +inf);
  and with a +inf logit, z - M is inf - inf here before the cond discards it,
  which ``checkify``'s ``float_checks`` reports although the loss returned is
  the right limit.
  """
  if mask is not None or _small(logits):
    return _soft_forward(options, logits, labels, mask)[0]
  class_axis = options.class_axis
  dtype = _checks.compute_dtype(logits.dtype, labels.dtype)
  m = class_axis.max(logits).astype(dtype)
  log_s = jnp.log(class_axis.total(_own_sum(jnp.exp(logits.astype(dtype) - m))))
  # As in ``_soft_forward``: the barrier keeps XLA:CPU from storing z - M.
  x, targets, shift = jax.lax.optimization_barrier((logits, labels, m))
  p = targets.astype(dtype)
  # A negative target makes its row NaN through √min(min p, 0), each shard's
  # row min before the shards' sums are added. From 4096 rows up XLA:CPU
  # takes that min into the sum's library fusion, so the targets are read
  # once (measured, issue 15: a separate min pass read them twice, a 0·√p per
  # element cost 10-30% of the value).
  y = x.astype(dtype) - shift
  lowest = jnp.min(targets, axis=-1, keepdims=True).astype(dtype)  # exact in the targets' dtype: no converted copy
  local = _own_sum(p * (log_s - y)) + jnp.sqrt(jnp.minimum(lowest, _NEGATIVE_ZERO))
  loss = class_axis.total(local)[..., 0]
  careful: jax.Array = jax.lax.cond(
    jnp.all(jnp.isfinite(loss)),
    lambda logits, labels: loss,
    lambda logits, labels: _soft_forward(options, logits, labels, None)[0],
    logits,
    labels,
  )
  return careful


def _targets(labels: jax.Array, mask: jax.Array | None, dtype: DTypeLike) -> jax.Array:
  """The soft labels (or their tangent) in the compute dtype, 0 on masked classes."""
  p = labels.astype(dtype)
  return p if mask is None else jnp.where(mask, p, 0)


def _like_logits(labels: jax.Array, logits: jax.Array) -> jax.Array:
  """Soft labels laid out as the logits when those are explicitly sharded (else as given),
  so that the elementwise gradient needs no gather of either."""
  if not _explicitly_sharded(logits):
    return labels
  resharded: jax.Array = jax.sharding.reshard(labels, jax.typeof(logits).sharding)
  return resharded


def _soft_exps(logits: jax.Array, mask: jax.Array | None, m: jax.Array) -> jax.Array:
  """exp(z - M) = p̂·s for the soft-label kernel; where ``_shares_exps``, the forward's
  expression, so XLA computes them once."""
  if not _shares_exps(logits):
    return _recomputed_exps(logits, mask, m)
  return _exp_shifted(logits, m.dtype, m, mask, top=True)


def _soft_tangent(
  options: SoftOptions,
  logits: jax.Array,
  labels: jax.Array,
  mask: jax.Array | None,
  stats: _Stats,
  dlogits: jax.Array | None,
  dlabels: jax.Array | None,
  dmask: jax.Array | None,
) -> jax.Array:
  """dL = Σ_k (p̂_k Σp - p_k) ż_k + Σ_k (-log p̂_k) ṗ_k per row; NaN rows stay NaN."""
  del dmask
  m, s, bad = stats
  class_axis = options.class_axis
  scale = jnp.where(jnp.expand_dims(_rows_kept(mask, class_axis), -1), _checks.nan_where(bad, jnp.ones_like(m)), 0)
  out = jnp.zeros_like(m)
  if dlogits is not None:
    labels = _like_logits(labels, logits)
    # Σp from a barrier'd view of the targets: XLA:CPU shared their float32
    # conversion between Σp and the gradient, and stored it (measured, bf16);
    # on the few-pass path the shared read saves a pass.
    total = class_axis.sum(_targets(labels if _small(logits) else jax.lax.optimization_barrier(labels), mask, m.dtype))
    dz = dlogits.astype(m.dtype)
    e_dz = class_axis.sum(_soft_exps(logits, mask, m) * dz)
    # Σp/s as one division (not Σp times 1/s), so that XLA:CPU computes Σp in
    # its reduction's own fusion, as optax's autodiff does (measured, issue 15:
    # 10 fusions to 9 in the 128×10 value_and_grad); a bad row's NaN is scale's.
    out = (scale * _over(total, s)) * e_dz - scale * class_axis.sum(_targets(labels, mask, m.dtype) * dz)
  if dlabels is not None:
    # ∂L/∂p = -log p̂ (+inf on a class with z = -inf, as the mathematics says).
    dp = _targets(_like_logits(dlabels, logits), mask, m.dtype)
    out = out + scale * class_axis.sum(_neg_log_softmax(logits, mask, m, jnp.log(s)) * dp)
  return out[..., 0]


# Per-row Σ p·(logsumexp(z) - z) over the last axis; NaN for negative targets.
fused_soft_labels = _fused_loss(_soft_forward, _soft_tangent, _shares_exps, _soft_value)
