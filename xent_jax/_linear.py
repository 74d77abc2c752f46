"""Fused linear cross-entropy: softmax CE of ``embeddings @ classifier`` without the N×V logits.

The logits z = h W are only ever formed one block at a time: a chunk of the
vocabulary for a block of tokens, at most about 16 MiB of float32 logits,
with float32 accumulation. The kernel is a ``jax.custom_jvp``, so forward
mode (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``), reverse mode and their
compositions (``jax.hessian``, jvp of grad) all work:

* The rule's primal walks the blocks keeping per token an online max M and
  s = Σ exp(z - M) (LogSumExp, Eq. 4.2.35), the label's logit and, for label
  smoothing, Σ z; the per-token loss comes from ``_core.loss``.
* The tangent is Σ_k G_k ż_k with ż = ḣ W + h Ẇ and G = ∂L/∂z from the row
  factors of ``_core.factors`` (Eq. 4.2.40), walked over the same blocks,
  each block's body under ``jax.checkpoint``.
* Reverse mode transposes the tangent, keeping only the inputs and
  (M, log s), and recomputes each block's logits: dX += G Wᵀ into a float32
  accumulator, dW[:, chunk] = hᵀ G (accumulated in float32 over the token
  blocks), the upstream gradient folded into G per token. 8·N·D·V flops for
  value_and_grad or a jvp, against the naive composition's 6·N·D·V.

``reduction="mean" | "sum"`` reduces the per-token losses. (A token walk that
forms each block's whole rows once and the gradient in the forward, 6·N·D·V
flops, measured no faster on XLA:CPU for value_and_grad and held a float32
D×V accumulator: 80 MiB against 28 at N=2048, D=512, V=32768.)

G is formed in float32 and stays so in the gradient products (the
classifier's chunk is converted per block, hᵀ once: N×D float32), so in
every dtype pair, bf16 embeddings with float32 master weights included, the
gradients are at least as accurate as the naive composition's. Losses are
float32 (float64 under x64), gradients in the inputs' dtypes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from xent_jax import _checks, _core
from xent_jax._core import ClassAxis
from xent_jax._fused import _fused_loss

ArrayLike = jax.typing.ArrayLike
# A block's first index: a Python int, or traced inside a loop.
Start = int | jax.Array
Carry = TypeVar("Carry")

# Bytes of float32 logits one block may hold; the block's other temporaries
# (p̂ and G) are of the same order.
_BLOCK_BYTES = 16 * 2**20


class _Options(NamedTuple):
  """Static options of the kernel."""

  ce: _core.Options
  softcap: float | None
  token_block: int  # tokens per block
  vocab_chunk: int  # classifier columns per block
  class_axis: ClassAxis


def _block_shape(tokens: int, vocab: int, chunk_size: int | tuple[int, int] | None) -> tuple[int, int]:
  """(tokens, classes) per block, at most about 16 MiB of float32 logits unless ``chunk_size`` says otherwise.

  The vocabulary chunk is by default the multiple of 128 (at least 128) that
  takes all tokens in 16 MiB; an int ``chunk_size`` sets it. The tokens are
  then blocked to keep a block within 16 MiB. A pair sets (tokens, classes).
  """
  if not isinstance(tokens, int):
    raise ValueError(
      "linear_cross_entropy needs a known number of tokens to block them (the embeddings' "
      f"batch shape), got the symbolic {tokens}: export it with a concrete batch."
    )
  if isinstance(chunk_size, tuple):
    rows, classes = chunk_size
    return max(1, min(rows, tokens)), min(classes, vocab)
  if chunk_size is None:
    classes = min(vocab, max(128, _BLOCK_BYTES // (4 * max(tokens, 1)) // 128 * 128))
  else:
    classes = min(chunk_size, vocab)
  return max(1, min(tokens, _BLOCK_BYTES // (4 * classes))), classes


def _walk(length: int, block: int, body: Callable[[Start, int, Carry], Carry], carry: Carry) -> Carry:
  """``body(start, size, carry)`` over [0, length) in blocks: a loop over the full blocks, then the remainder."""
  full, rest = divmod(length, block)
  if full > 1:
    carry = jax.lax.fori_loop(0, full, lambda i, c: body(i * block, block, c), carry)
  elif full:
    carry = body(0, block, carry)
  return body(full * block, rest, carry) if rest else carry


def _varying_like(x: jax.Array, *like: jax.Array) -> jax.Array:
  """``x`` typed (inside ``shard_map``) as varying over every mesh axis any of ``like``
  varies over: a loop's initial carry, as the carry will be after one step."""
  axes = tuple(sorted(set().union(*(_varying_axes(y) for y in like)) - _varying_axes(x)))
  return jax.lax.pcast(x, axes, to="varying") if axes else x


def _full(shape: tuple[int, ...], value: float, dtype: DTypeLike, *like: jax.Array) -> jax.Array:
  """A loop's initial carry filled with ``value`` (see ``_varying_like``)."""
  return _varying_like(jnp.full(shape, value, dtype), *like)


def _varying_axes(x: jax.Array) -> frozenset[str]:
  """The manual mesh axes ``x`` varies over (``typeof(x).vma`` in older JAX)."""
  aval = jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)
  return frozenset(manual.varying) if manual is not None else frozenset(getattr(aval, "vma", ()))


def _slice(x: jax.Array, start: Start, size: int, axis: int) -> jax.Array:
  """``x[start:start + size]`` along ``axis`` inside a loop.

  The barrier makes ``x`` a value of the loop body. Otherwise XLA:CPU, which
  slices bf16 as float32, hoists that conversion of the whole loop-invariant
  array out of the loop: a float32 copy of the classifier.
  """
  x, start = jax.lax.optimization_barrier((x, jnp.asarray(start)))
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _matmul(a: jax.Array, b: jax.Array, dtype: DTypeLike, contract: tuple[int, int] = (1, 0)) -> jax.Array:
  """a·b over axis ``contract[0]`` of a and ``contract[1]`` of b, accumulated and returned in ``dtype``;
  the operands keep their dtypes (a bf16·f32 product is computed in float32)."""
  return jax.lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())), preferred_element_type=dtype)


def _logits(h: jax.Array, w: jax.Array, opts: _Options) -> tuple[jax.Array, jax.Array | None]:
  """Block logits h @ w in float32 (or wider), soft-capped, and d(cap)/dz (None without a cap)."""
  z = _matmul(h, w, _checks.compute_dtype(h.dtype, w.dtype))
  if opts.softcap is None:
    return z, None
  t = jnp.tanh(z / opts.softcap)
  return opts.softcap * t, 1 - jnp.square(t)


def _shifted_labels(labels: jax.Array, start: Start) -> jax.Array:
  """Labels relative to a block whose first class is ``start`` (the shard's offset included)."""
  return labels - jnp.asarray(start).astype(labels.dtype)


def _logit_at_label(z: jax.Array, block_labels: jax.Array) -> jax.Array:
  """z[n, label_n] for the tokens whose label falls in this block, 0 for the others."""
  width = z.shape[-1]
  inside = (block_labels >= 0) & (block_labels < width)
  picked = jnp.take_along_axis(z, jnp.clip(block_labels, 0, width - 1)[:, None], axis=-1)[:, 0]
  return jnp.where(inside, picked, 0)


class _Stats(NamedTuple):
  """Per-token online statistics: shift M, s = Σ exp(z - M), the label's logit, Σ z."""

  m: jax.Array
  s: jax.Array
  label_logit: jax.Array
  sum_z: jax.Array


def _merge(stats: _Stats, z: jax.Array, block_labels: jax.Array, opts: _Options) -> _Stats:
  """The statistics updated with one block of logits (online LogSumExp, Eq. 4.2.35)."""
  m = jnp.maximum(stats.m, jnp.max(z, axis=-1))
  s = stats.s * jnp.exp(stats.m - m) + jnp.sum(jnp.exp(z - m[:, None]), axis=-1)
  label_logit = stats.label_logit + _logit_at_label(z, block_labels)
  sum_z = stats.sum_z + jnp.sum(z, axis=-1) if opts.ce.label_smoothing else stats.sum_z
  return _Stats(m, s, label_logit, sum_z)


def _combine(stats: _Stats, class_axis: ClassAxis) -> _Stats:
  """The statistics over the whole vocabulary, from each shard's (with a split vocabulary)."""
  if class_axis.axis_name is None:
    return stats
  m = class_axis.max(stats.m[:, None])[:, 0]

  def total(x: jax.Array) -> jax.Array:
    return class_axis.sum(x[:, None])[:, 0]

  return _Stats(m, total(stats.s * jnp.exp(stats.m - m)), total(stats.label_logit), total(stats.sum_z))


def _statistics(opts: _Options, h: jax.Array, w: jax.Array, labels: jax.Array) -> _Stats:
  """Per-token statistics over the blocks of the vocabulary (and of the tokens)."""
  n, local = h.shape[0], w.shape[1]
  labels = _shifted_labels(labels, opts.class_axis.offset(local))

  def chunk(col: Start, width: int, stats: _Stats) -> _Stats:
    def block(row: Start, height: int, stats: _Stats) -> _Stats:
      z, _ = _logits(_slice(h, row, height, 0), _slice(w, col, width, 1), opts)
      rows = [jax.lax.dynamic_slice_in_dim(x, row, height) for x in (*stats, labels)]
      new = _merge(_Stats(*rows[:4]), z, _shifted_labels(rows[4], col), opts)
      return _Stats(*(jax.lax.dynamic_update_slice_in_dim(x, v, row, 0) for x, v in zip(stats, new, strict=True)))

    return _walk(n, opts.token_block, block, stats)

  dtype = _checks.compute_dtype(h.dtype, w.dtype)
  init = _Stats(*(_full((n,), value, dtype, h, w, labels) for value in (-jnp.inf, 0, 0, 0)))
  return _combine(_walk(local, opts.vocab_chunk, chunk, init), opts.class_axis)


def _losses(opts: _Options, stats: _Stats, rows: _core.Rows, vocab: int) -> jax.Array:
  """Per-token loss from the statistics (the mathematics is ``_core.loss``)."""
  lse = stats.m + jnp.log(stats.s)
  smooth = lse - stats.sum_z / vocab if opts.ce.label_smoothing else None
  return _core.loss(rows, opts.ce, jnp.log(stats.s) - (stats.label_logit - stats.m), lse, smooth)


def _dlogits(
  z: jax.Array,
  dcap: jax.Array | None,
  block_labels: jax.Array,
  m: jax.Array,
  log_s: jax.Array,
  factors: _core.Factors,
  vocab: int,
) -> jax.Array:
  """G = ∂L/∂z for one block, p̂·softmax - e_c·label - spread/V (times d(cap)/dz), in float32."""
  p_hat = jnp.exp((z - m[:, None]) - log_s[:, None])
  classes = jax.lax.broadcasted_iota(block_labels.dtype, z.shape, 1)
  g = p_hat * factors.softmax[:, None] - jnp.where(classes == block_labels[:, None], factors.label[:, None], 0)
  if factors.spread is not None:  # Σ_allowed 1/V = 1: the spread is uniform
    g = g - (factors.spread / vocab)[:, None]
  return g if dcap is None else g * dcap


def _per_token_forward(
  opts: _Options, h: jax.Array, w: jax.Array, labels: jax.Array, keep: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  vocab = opts.class_axis.size(w.shape[1])
  stats = _statistics(opts, h, w, labels)
  return _losses(opts, stats, _core.rows(labels, vocab, opts.ce, keep), vocab), (stats.m, jnp.log(stats.s))


def _per_token_tangent(
  opts: _Options,
  h: jax.Array,
  w: jax.Array,
  labels: jax.Array,
  keep: jax.Array,
  stats: tuple[jax.Array, jax.Array],
  dh: jax.Array | None,
  dw: jax.Array | None,
  dlabels: None,
  dkeep: None,
) -> jax.Array:
  """Σ_k G_k ż_k per token, ż = ḣ W + h Ẇ, over the blocks (linear in ḣ, Ẇ).

  Each block's body is under ``jax.checkpoint``, so the transpose (reverse
  mode) recomputes the block's logits instead of keeping them. ḣ enters in
  float32, so its cotangent dX accumulates in float32; with several token
  blocks a chunk of Ẇ enters in float32, so dW[:, chunk] accumulates in
  float32 over them.
  """
  del dlabels, dkeep  # integer labels and boolean masks have no tangent
  m, log_s = stats
  n, local, dtype, class_axis = h.shape[0], w.shape[1], m.dtype, opts.class_axis
  vocab = class_axis.size(local)
  factors = _core.factors(_core.rows(labels, vocab, opts.ce, keep), opts.ce, m + log_s, 1.0)
  labels = _shifted_labels(labels, class_axis.offset(local))
  dh = None if dh is None else dh.astype(dtype)
  # The Ẇ term's transpose is dW = hᵀ G with G in float32. hᵀ is stored once,
  # in float32, so that this is a plain (D, N)·(N, chunk) product: XLA:CPU
  # would otherwise convert or transpose h in every step of the loop.
  h_t = None if dw is None else jax.lax.optimization_barrier(h.astype(dtype).T)

  @functools.partial(jax.checkpoint, static_argnums=(1,))
  def chunk(col: Start, width: int, carry: tuple[jax.Array | None, jax.Array]) -> tuple[jax.Array | None, jax.Array]:
    # Ẇ passes through the barrier with the loop's carry, as the classifier
    # does in ``_slice``: no float32 copy of a bf16 Ẇ hoisted out of the loop.
    dw, out = jax.lax.optimization_barrier(carry)
    dw_chunk = None if dw is None else jax.lax.dynamic_slice_in_dim(dw, col, width, 1)
    if dw_chunk is not None and opts.token_block < n:
      dw_chunk = dw_chunk.astype(dtype)

    @functools.partial(jax.checkpoint, static_argnums=(1,))
    def block(row: Start, height: int, out: jax.Array) -> jax.Array:
      h_rows, w_cols = _slice(h, row, height, 0), _slice(w, col, width, 1)
      z, dcap = _logits(h_rows, w_cols, opts)

      def rows(x: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice_in_dim(x, row, height)

      spread = None if factors.spread is None else rows(factors.spread)
      f = _core.Factors(rows(factors.softmax), rows(factors.label), spread, rows(factors.scale))
      g = _dlogits(z, dcap, _shifted_labels(rows(labels), col), rows(m), rows(log_s), f, vocab)
      dz: jax.Array | int = 0
      if dh is not None:
        dz = dz + _matmul(rows(dh), w_cols, dtype)
      if dw_chunk is not None and h_t is not None:
        dz = dz + _matmul(jax.lax.dynamic_slice_in_dim(h_t, row, height, 1), dw_chunk, dtype, (0, 0))
      return jax.lax.dynamic_update_slice_in_dim(out, rows(out) + jnp.sum(g * dz, axis=-1), row, 0)

    return dw, _walk(n, opts.token_block, block, out)

  tangents = [t for t in (dh, dw) if t is not None]
  out = _full((n,), 0, dtype, h, w, labels, keep, *tangents)
  _, out = _walk(local, opts.vocab_chunk, chunk, (None if dw is None else _varying_like(dw, out), out))
  return class_axis.sum(out[:, None])[:, 0]


# Per-token losses: _per_token(opts, h, w, labels, keep); NaN for a label outside
# [0, V) that is not the ignore index, 0 for tokens ignored or not kept.
_per_token = _fused_loss(_per_token_forward, _per_token_tangent)


def _reduce(losses: jax.Array, rows: _core.Rows, reduction: str, batch_axes: tuple[str, ...]) -> jax.Array:
  """The per-token losses summed, or averaged over the counted tokens, over every device of the batch axes."""

  def over_devices(x: jax.Array) -> jax.Array:
    return jax.lax.psum(x, batch_axes) if batch_axes else x

  total = over_devices(jnp.sum(losses))
  if reduction == "sum":
    return total
  count = over_devices(_core.count(rows, total.dtype))
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0)


def _positive(x: object) -> bool:
  """Whether ``x`` is a Python int of at least 1 (not a bool)."""
  return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def _chunk_size(value: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
  """``chunk_size`` checked: None, a positive int or a pair of them."""
  if value is None or _positive(value) or (isinstance(value, tuple) and len(value) == 2 and all(map(_positive, value))):
    return value
  raise ValueError(f"`chunk_size` must be a positive int, a pair of them (tokens, classes) or None, got {value!r}.")


def _axis_names(value: str | tuple[str, ...] | None, name: str) -> tuple[str, ...]:
  names = (value,) if isinstance(value, str) else tuple(value or ())
  if not all(isinstance(a, str) for a in names):
    raise TypeError(f"`{name}` must be a mesh axis name, a tuple of them or None, got {value!r}.")
  return names


def linear_cross_entropy(
  embeddings: ArrayLike,
  classifier: ArrayLike,
  labels: ArrayLike,
  *,
  where: ArrayLike | None = None,
  ignore_index: int | None = None,
  label_smoothing: float = 0.0,
  z_loss: float = 0.0,
  softcap: float | None = None,
  chunk_size: int | tuple[int, int] | None = None,
  reduction: str = "none",
  axis_name: str | None = None,
  batch_axis_name: str | tuple[str, ...] | None = None,
) -> jax.Array:
  r"""Softmax cross-entropy of ``embeddings @ classifier`` that never holds the logits.

  .. math::
    z = h W, \qquad
    L = (1-\varepsilon)(\operatorname{lse}(z) - z_{c^*})
      + \varepsilon\big(\operatorname{lse}(z) - \tfrac{1}{V}\textstyle\sum_i z_i\big)
      + \zeta \operatorname{lse}(z)^2

  Equal to ``softmax_cross_entropy_with_integer_labels(embeddings @ classifier,
  labels, ...)`` with the same options (seed Eq. 4.2.37–4.2.40), computed in
  blocks of at most about 16 MiB of float32 logits with an online LogSumExp
  (Eq. 4.2.35), so no N×V array exists, in forward and reverse mode (see the
  module docstring). With ``softcap`` c the logits are ``c·tanh(z/c)``
  (Gemma 2).

  Args:
    embeddings: h, shape ``[..., D]`` (the last hidden states).
    classifier: W, shape ``[D, V]`` (the layout of a flax ``Dense`` kernel).
    labels: integer classes, shape ``[...]`` (the embeddings' leading shape).
    where: tokens to include, shape ``[...]``; excluded tokens give 0.
    ignore_index: a label value whose tokens give loss 0 and gradient 0.
    label_smoothing: ε in [0, 1].
    z_loss: ζ ≥ 0, the weight of log²Z.
    softcap: c > 0 or None.
    chunk_size: classifier columns per block, or a pair (tokens, columns);
      by default a block holds about 16 MiB of float32 logits.
    reduction: ``"none"`` (per-token losses, the default), ``"mean"`` (over
      tokens that are kept and not ignored) or ``"sum"``.
    axis_name: inside ``shard_map``, the mesh axis the vocabulary is split
      over: ``classifier`` is this device's ``[D, V/k]`` shard, the other
      arguments are replicated; the online statistics are combined with
      ``pmax``/``psum``, dW stays local and dX is summed over the shards.
    batch_axis_name: inside ``shard_map``, the mesh axes the tokens are split
      over (data parallelism), for ``reduction="mean" | "sum"``: the result is
      the global sum, or the global mean Σ losses / Σ counts over every
      device of those axes (not the mean of the devices' means, which is
      biased when ``where`` or ``ignore_index`` leave them different counts),
      the same on each; return it from the ``shard_map`` and differentiate
      outside.

  Returns:
    float32 (for 16-bit inputs) per-token losses of shape ``[...]``, or a
    scalar. NaN for a token whose label is outside ``[0, V)`` and not
    ``ignore_index``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import xent_jax
    >>> h = jax.random.normal(jax.random.key(0), (4, 8))
    >>> w = jax.random.normal(jax.random.key(1), (8, 1000))
    >>> y = jnp.array([1, 2, 3, 999])
    >>> fused = xent_jax.linear_cross_entropy(h, w, y, chunk_size=256)
    >>> naive = xent_jax.softmax_cross_entropy_with_integer_labels(h @ w, y)
    >>> bool(jnp.allclose(fused, naive, rtol=1e-5))
    True

  References:
    Wijmans et al., Cut Your Losses in Large-Vocabulary Language Models
    (2024); Hsu et al., Liger Kernel (2024).
  """
  h = _checks.as_floating(embeddings, "embeddings")
  w = _checks.as_floating(classifier, "classifier")
  labels = _checks.as_integer(labels, "labels")
  if h.ndim < 1:
    raise ValueError("`embeddings` must have shape [..., D], got a scalar.")
  if w.ndim != 2 or w.shape[1] == 0:
    raise ValueError(f"`classifier` must have shape [D, V] with V ≥ 1, got {w.shape}.")
  if w.shape[0] != h.shape[-1]:
    raise ValueError(
      f"`classifier` has {w.shape[0]} rows but `embeddings` has width {h.shape[-1]}:"
      f" expected [D, V] with D = {h.shape[-1]}."
    )
  if labels.shape != h.shape[:-1]:
    raise ValueError(f"`labels` has shape {labels.shape}; expected the embeddings' leading shape {h.shape[:-1]}.")
  if reduction not in ("none", "mean", "sum"):
    raise ValueError(f"`reduction` must be one of ('none', 'mean', 'sum'), got {reduction!r}.")
  if softcap is not None:
    softcap = _checks.static_number(softcap, "softcap", low=0.0, low_open=True)
  batch_axes = _axis_names(batch_axis_name, "batch_axis_name")
  if batch_axes and reduction == "none":
    raise ValueError("`batch_axis_name` needs reduction='mean' or 'sum' (per-token losses stay on their device).")
  batch_shape = labels.shape
  keep = (
    jnp.ones(batch_shape, bool)
    if where is None
    else _checks.broadcast_arg(jnp.asarray(where, bool), batch_shape, "where", "labels")
  )
  h2, y2, k2 = h.reshape(-1, h.shape[-1]), labels.reshape(-1), keep.reshape(-1)
  token_block, vocab_chunk = _block_shape(h2.shape[0], w.shape[1], _chunk_size(chunk_size))
  opts = _Options(
    ce=_core.options(label_smoothing, z_loss, ignore_index),
    softcap=softcap,
    token_block=token_block,
    vocab_chunk=vocab_chunk,
    class_axis=ClassAxis(axis_name),
  )
  losses = _per_token(opts, h2, w, y2, k2)
  if reduction == "none":
    return losses.reshape(batch_shape)
  rows = _core.rows(y2, opts.class_axis.size(w.shape[1]), opts.ce, k2)
  return _reduce(losses, rows, reduction, batch_axes)
