"""Trace-time argument checks and the dtype policy shared by every loss.

Everything here runs on static information only (shapes, dtypes, Python
arguments), so a fault is reported when the function is traced, with the
argument's name, what was expected and what came.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Axis = int | Sequence[int] | None


def as_floating(x: jax.typing.ArrayLike, name: str) -> jax.Array:
  """Returns ``x`` as an array, raising TypeError unless it is floating point."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"`{name}` must be a floating-point array, got dtype {x.dtype}.")
  return x


def as_integer(x: jax.typing.ArrayLike, name: str) -> jax.Array:
  """Returns ``x`` as an array, raising TypeError unless it holds integers; 8- and 16-bit
  integers are widened to int32, in which class counts and offsets do not overflow (an int8
  label against 200 classes clipped to C - 1 = -57, and read as out of range)."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise TypeError(
      f"`{name}` must be an integer array of class indices, got dtype {x.dtype}"
      " (use the soft-label loss for probabilities)."
    )
  return x.astype(jnp.int32) if x.dtype.itemsize < 4 else x


def compute_dtype(*dtypes: jnp.dtype) -> jnp.dtype:
  """The dtype losses are computed in: float32 for 16-bit floats, else the widest.

  bf16 and fp16 inputs are upcast to float32; float64 stays float64 (it only
  exists when x64 is enabled). Non-floating dtypes (integer or boolean labels)
  do not take part.
  """
  floats = [jnp.dtype(d) for d in dtypes if jnp.issubdtype(d, jnp.floating)]
  return max([jnp.dtype(jnp.float32), *floats], key=lambda d: d.itemsize)


def normalize_axes(axis: Axis, ndim: int, name: str = "axis") -> tuple[int, ...]:
  """Non-negative axes in the order given (optax flattens class axes in that order);
  ``None`` means all axes."""
  if axis is None:
    return tuple(range(ndim))
  # Anything but a sequence is one axis, so a float or a string fails the int check below.
  axes: tuple[object, ...] = tuple(axis) if isinstance(axis, Sequence) and not isinstance(axis, str) else (axis,)
  if not axes:
    raise ValueError(f"`{name}` must name at least one axis, got {axis!r}.")
  out = []
  for a in axes:
    if not isinstance(a, (int, np.integer)):
      raise TypeError(f"`{name}` must be an int or a tuple of ints, got {axis!r}.")
    if not -ndim <= a < ndim:
      raise ValueError(f"`{name}`={axis!r} is out of range for an array of rank {ndim}.")
    out.append(int(a) % ndim)
  if len(set(out)) != len(out):
    raise ValueError(f"`{name}`={axis!r} repeats an axis.")
  return tuple(out)


def classes_last(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Moves ``axes`` to the end (in order) and flattens them into one class axis."""
  batch = tuple(a for a in range(x.ndim) if a not in axes)
  x = jnp.transpose(x, batch + axes) if batch + axes != tuple(range(x.ndim)) else x
  # The class size spelled out: -1 cannot be inferred for an empty batch.
  return x.reshape(*x.shape[: len(batch)], math.prod(x.shape[len(batch) :]))


def fits(shape: tuple[int, ...], target_shape: tuple[int, ...]) -> bool:
  """Whether ``shape`` broadcasts to exactly ``target_shape``."""
  try:
    return jnp.broadcast_shapes(shape, target_shape) == tuple(target_shape)
  except ValueError:
    return False


def check_broadcastable(shape: tuple[int, ...], target_shape: tuple[int, ...], name: str, target: str) -> None:
  """Raises a ValueError naming both arguments unless ``shape`` broadcasts to ``target_shape``."""
  if not fits(shape, target_shape):
    raise ValueError(f"`{name}` has shape {shape}, which does not broadcast to {target}'s shape {tuple(target_shape)}.")


def broadcast_arg(x: jax.Array, shape: tuple[int, ...], name: str, target: str) -> jax.Array:
  """Broadcasts ``x`` to ``shape`` or raises a ValueError naming both."""
  check_broadcastable(x.shape, shape, name, target)
  return jnp.broadcast_to(x, shape)


def masked_sum(terms: jax.Array, axis: Axis, where: jax.typing.ArrayLike | None, target: str) -> jax.Array:
  """``terms`` summed over ``axis`` where ``where`` holds (broadcast to the terms' shape, or a ValueError
  naming ``where`` and ``target``, the argument the terms come from)."""
  axes = normalize_axes(axis, terms.ndim)
  if where is not None:
    where = broadcast_arg(jnp.asarray(where, bool), terms.shape, "where", target)
  return jnp.sum(terms, axis=axes, where=where)


def broadcast_pair(a: jax.Array, b: jax.Array, names: tuple[str, str]) -> tuple[jax.Array, jax.Array]:
  """Both arrays broadcast to their joint shape in the compute dtype; a ValueError names both."""
  try:
    shape = jnp.broadcast_shapes(a.shape, b.shape)
  except ValueError:
    raise ValueError(f"`{names[0]}` of shape {a.shape} and `{names[1]}` of shape {b.shape} do not broadcast.") from None
  dtype = compute_dtype(a.dtype, b.dtype)
  return jnp.broadcast_to(a, shape).astype(dtype), jnp.broadcast_to(b, shape).astype(dtype)


def log_base_scale(base: float | None) -> float | None:
  """1 / ln(base) for a static log base, None for nats; validates the base."""
  if base is None:
    return None
  try:
    b = float(base)
  except jax.errors.ConcretizationTypeError:
    raise TypeError("`base` must be a static Python number, got a traced value.") from None
  if not (b > 0 and b != 1 and math.isfinite(b)):
    raise ValueError(f"`base` must be a finite number > 0 and != 1, got {base!r}.")
  return 1.0 / math.log(b)


def rescale(x: jax.Array, scale: float | None) -> jax.Array:
  """Converts nats to the unit of ``scale`` (see ``log_base_scale``)."""
  return x if scale is None else x * scale


def static_number(value: float, name: str, *, low: float, high: float = math.inf, low_open: bool = False) -> float:
  """A static Python number in [low, high] (or (low, high]); ValueError/TypeError naming it."""
  try:
    v = float(value)
  except (jax.errors.ConcretizationTypeError, TypeError):
    raise TypeError(f"`{name}` must be a static Python number, got {type(value).__name__}.") from None
  if not (low < v if low_open else low <= v) or not v <= high or math.isnan(v):
    interval = f"{'(' if low_open else '['}{low}, {high}]"
    raise ValueError(f"`{name}` must be in {interval}, got {value!r}.")
  return v


def static_index(value: int | None, name: str) -> int | None:
  """A static Python int or None; TypeError naming it otherwise."""
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"`{name}` must be a Python int or None, got {type(value).__name__}.")
  return int(value)


def nan_where(bad: jax.Array | bool, x: jax.Array) -> jax.Array:
  """``x`` with NaN where ``bad`` (a data fault), broadcast to their joint shape.

  The NaN enters through an ``add``, not a ``select``, so that
  ``jax.experimental.checkify`` with ``float_checks`` reports it.
  """
  return x + jnp.where(bad, jnp.nan, 0).astype(x.dtype)


def label_validity(labels: jax.Array, num_classes: int, ignore_index: int | None) -> tuple[jax.Array, jax.Array]:
  """(valid, ignored) per label: valid means in ``[0, num_classes)`` or the ignore index."""
  ignored = jnp.zeros(labels.shape, bool) if ignore_index is None else labels == ignore_index
  return (labels >= 0) & (labels < num_classes) | ignored, ignored
