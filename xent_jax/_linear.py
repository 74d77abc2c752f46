"""Fused linear cross-entropy: softmax CE of ``embeddings @ classifier`` without the N×V logits.

The logits z = h W are only ever formed one chunk at a time, with float32
accumulation. Two kernels, both ``jax.custom_vjp``:

* per-example losses (``reduction="none"``): the forward walks the vocabulary
  in chunks keeping an online max M and sum s = Σ exp(z - M) (LogSumExp,
  Eq. 4.2.35), the label's logit and, for label smoothing, Σ z. The residuals
  are the inputs and, per token, M and log s. The backward walks the
  vocabulary again, recomputes each chunk of logits and forms
  G = (p̂·(1 + 2ζ lse) - (1-ε) onehot - ε/V)·u in float32, with the upstream
  gradient u folded in per token before any sum over tokens, then
  dX += G Wᵀ (float32 accumulator) and dW[:, chunk] = hᵀ G (one matmul over
  all tokens, float32 accumulation, no accumulation across chunks).
  8·N·D·V flops for value_and_grad against the naive 6·N·D·V.
* scalar losses (``reduction="mean" | "sum"``): the upstream gradient is one
  number, so the forward of a differentiated call walks the tokens in chunks,
  forms each chunk's full logits once, and computes the loss, dX and dW
  (float32 accumulator) together; the backward only scales them. 6·N·D·V flops.
  A forward-only call runs the vocabulary walk and computes no gradient.

The backward matmuls take the inputs' dtype (G is rounded to it after being
formed in float32); gradients come back in the inputs' dtypes.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from xent_jax import _checks
from xent_jax._fused import Classes

ArrayLike = jax.typing.ArrayLike

# Bytes of float32 logits one chunk may hold; the chunk's other N×chunk
# temporaries (p̂, G and its rounded copy) are of the same order.
_CHUNK_BYTES = 16 * 2**20


class _Options(NamedTuple):
  label_smoothing: float
  z_loss: float
  ignore_index: int | None
  softcap: float | None
  vocab_chunk: int
  token_chunk: int
  reduction: str
  classes: Classes


def default_chunk_size(rows: int, length: int) -> int:
  """Chunk of ``length`` so that rows × chunk float32 logits take about 16 MiB: a multiple of 128."""
  chunk = _CHUNK_BYTES // (4 * max(rows, 1))
  return int(max(1, min(length, max(128, chunk // 128 * 128))))


def _chunks(length: int, chunk: int) -> list[tuple[int, int]]:
  """(number of steps, width) pairs: the full chunks, then the remainder if any."""
  full, rest = divmod(length, chunk)
  return [(n, w) for n, w in ((full, chunk), (1, rest)) if n and w]


def _full(shape, value, dtype, *like: jax.Array) -> jax.Array:
  """A loop's initial carry, typed (inside ``shard_map``) as varying over every mesh
  axis any of ``like`` varies over, as the carry will after one step."""
  out = jnp.full(shape, value, dtype)
  axes = set().union(*(_varying_axes(x) for x in like))
  return jax.lax.pcast(out, tuple(sorted(axes)), to="varying") if axes else out


def _varying_axes(x: jax.Array) -> frozenset:
  """The manual mesh axes ``x`` varies over (``typeof(x).vma`` in older JAX)."""
  aval = jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)
  return frozenset(manual.varying) if manual is not None else frozenset(getattr(aval, "vma", ()))


def _cotangent_for(ct: jax.Array, primal: jax.Array) -> jax.Array:
  """``ct`` summed over the mesh axes it varies over and ``primal`` does not: inside
  ``shard_map`` an input shared by several devices gets the sum of their gradients."""
  extra = tuple(sorted(_varying_axes(ct) - _varying_axes(primal)))
  return jax.lax.psum(ct, extra) if extra else ct


def _slice(x, start, size, axis):
  """``x[start:start + size]`` along ``axis`` inside a loop.

  The barrier makes ``x`` a value of the loop body. Otherwise XLA:CPU, which
  slices bf16 as float32, hoists that conversion of the whole loop-invariant
  array out of the loop: a float32 copy of the classifier.
  """
  x, start = jax.lax.optimization_barrier((x, start))
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _logits(h, w, opts):
  """Chunk logits h @ w in float32 (or wider), soft-capped, and d(cap)/dz."""
  z = jnp.matmul(h, w, preferred_element_type=_checks.compute_dtype(h.dtype, w.dtype))
  if opts.softcap is None:
    return z, None
  t = jnp.tanh(z / opts.softcap)
  return opts.softcap * t, 1 - jnp.square(t)


def _counted(labels, keep, opts, dtype):
  """How many tokens are kept and not ignored: the denominator of the mean."""
  _, ignored = _checks.label_validity(labels, 0, opts.ignore_index)
  return jnp.sum((keep & ~ignored).astype(dtype))


def _label_logit(z, local, width):
  """z[label] for the labels in this chunk (``local`` = label - chunk start), 0 for the others."""
  here = (local >= 0) & (local < width)
  picked = jnp.take_along_axis(z, jnp.clip(local, 0, width - 1)[:, None], axis=-1)[:, 0]
  return jnp.where(here, picked, 0)


def _row_loss(m, log_s, label_logit, sum_z, vocab, opts):
  """Per-token loss from the row statistics (see softmax_cross_entropy_with_integer_labels)."""
  lse = m + log_s
  loss = (1 - opts.label_smoothing) * (log_s - (label_logit - m))
  if opts.label_smoothing:
    loss = loss + opts.label_smoothing * (lse - sum_z / vocab)
  if opts.z_loss:
    loss = loss + opts.z_loss * jnp.square(lse)
  return loss


def _vocab_walk(h, w, labels, opts):
  """Online (M, log s, z_label, Σz) per token over vocabulary chunks (Eq. 4.2.35)."""
  n, vocab = h.shape[0], w.shape[1]
  dtype = _checks.compute_dtype(h.dtype, w.dtype)
  carry = tuple(_full((n,), value, dtype, h, w, labels) for value in (-jnp.inf, 0, 0, 0))
  labels = labels - opts.classes.offset(vocab)  # this shard's class numbering
  start = 0
  for steps, width in _chunks(vocab, opts.vocab_chunk):

    def step(i, carry, start=start, width=width):
      m, s, label_logit, sum_z = carry
      offset = start + i * width
      z, _ = _logits(h, _slice(w, offset, width, 1), opts)
      m_new = jnp.maximum(m, jnp.max(z, axis=-1))
      s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new[:, None]), axis=-1)
      label_logit = label_logit + _label_logit(z, labels - offset, width)
      if opts.label_smoothing:
        sum_z = sum_z + jnp.sum(z, axis=-1)
      return m_new, s, label_logit, sum_z

    carry = jax.lax.fori_loop(0, steps, step, carry)
    start += steps * width
  m, s, label_logit, sum_z = carry
  if opts.classes.axis_name is not None:  # combine the shards' online statistics
    m_all = opts.classes.max(m[:, None])[:, 0]
    s = opts.classes.sum((s * jnp.exp(m - m_all))[:, None])[:, 0]
    label_logit, sum_z = (opts.classes.sum(v[:, None])[:, 0] for v in (label_logit, sum_z))
    m = m_all
  return m, jnp.log(s), label_logit, sum_z


def _finish(loss, labels, keep, opts, vocab):
  valid, ignored = _checks.label_validity(labels, vocab, opts.ignore_index)
  loss = _checks.nan_where(~valid, loss)
  return jnp.where(keep & ~ignored, loss, 0)


def _reduce(per_token, labels, keep, opts):
  if opts.reduction == "none":
    return per_token
  total = jnp.sum(per_token)
  if opts.reduction == "sum":
    return total
  count = _counted(labels, keep, opts, total.dtype)
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0)


def _primal(opts, h, w, labels, keep):
  vocab = opts.classes.size(w.shape[1])
  m, log_s, label_logit, sum_z = _vocab_walk(h, w, labels, opts)
  loss = _row_loss(m, log_s, label_logit, sum_z, vocab, opts)
  return _reduce(_finish(loss, labels, keep, opts, vocab), labels, keep, opts)


def _row_scale(upstream, labels, keep, opts, vocab):
  """The per-token factor of G: the upstream gradient, 0 for skipped tokens, NaN for bad labels."""
  valid, ignored = _checks.label_validity(labels, vocab, opts.ignore_index)
  return jnp.where(keep & ~ignored, _checks.nan_where(~valid, upstream), 0)


def _chunk_grad(z, dcap, labels, offset, m, log_s, scale, opts, vocab):
  """G = (p̂ (1 + 2ζ lse) - (1-ε) onehot - ε/V)·u for one chunk, in float32."""
  p_hat = jnp.exp((z - m[:, None]) - log_s[:, None])
  total = scale if not opts.z_loss else scale * (1 + 2 * opts.z_loss * (m + log_s))
  classes = jax.lax.broadcasted_iota(labels.dtype, z.shape, 1) + offset
  g = p_hat * total[:, None] - jnp.where(classes == labels[:, None], (1 - opts.label_smoothing) * scale[:, None], 0)
  if opts.label_smoothing:
    g = g - (opts.label_smoothing / vocab) * scale[:, None]
  return g if dcap is None else g * dcap


# Per-example kernel: vocabulary walk forward, recomputing backward.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _per_example(opts, h, w, labels, keep):
  return _primal(opts, h, w, labels, keep)


def _per_example_fwd(opts, h, w, labels, keep):
  vocab = opts.classes.size(w.shape[1])
  m, log_s, label_logit, sum_z = _vocab_walk(h, w, labels, opts)
  loss = _row_loss(m, log_s, label_logit, sum_z, vocab, opts)
  return _finish(loss, labels, keep, opts, vocab), (h, w, labels, keep, m, log_s)


def _per_example_bwd(opts, res, upstream):
  h, w, labels, keep, m, log_s = res
  vocab, shard = opts.classes.size(w.shape[1]), opts.classes.offset(w.shape[1])
  scale = _row_scale(upstream.astype(m.dtype), labels, keep, opts, vocab)
  dx = _full(h.shape, 0, m.dtype, h, w, labels, upstream)
  dw = _full(w.shape, 0, w.dtype, h, w, labels, upstream)
  # hᵀ stored once in h's dtype, so dW = hᵀ G is a plain (D, N)·(N, chunk)
  # product: XLA:CPU would otherwise upcast a transposed bf16 h to float32.
  h_t = jax.lax.optimization_barrier(h.T)
  start = 0
  for steps, width in _chunks(w.shape[1], opts.vocab_chunk):

    def step(i, carry, start=start, width=width):
      dx, dw = carry
      offset = start + i * width
      w_chunk = _slice(w, offset, width, 1)
      z, dcap = _logits(h, w_chunk, opts)
      g = _chunk_grad(z, dcap, labels, shard + offset, m, log_s, scale, opts, vocab)
      g_in = g.astype(h.dtype)
      dx = dx + jnp.matmul(g_in, w_chunk.T, preferred_element_type=dx.dtype)
      dw_chunk = jnp.matmul(h_t, g_in.astype(w.dtype), preferred_element_type=m.dtype).astype(w.dtype)
      return dx, jax.lax.dynamic_update_slice_in_dim(dw, dw_chunk, offset, axis=1)

    dx, dw = jax.lax.fori_loop(0, steps, step, (dx, dw))
    start += steps * width
  # h is shared by the vocabulary shards, W by the token shards (data parallelism).
  return _cotangent_for(dx, h).astype(h.dtype), _cotangent_for(dw, w), None, None


_per_example.defvjp(_per_example_fwd, _per_example_bwd)


# Scalar kernel: token walk with the gradient formed in the forward.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scalar(opts, h, w, labels, keep):
  return _primal(opts, h, w, labels, keep)


def _scalar_fwd(opts, h, w, labels, keep):
  n, classes = h.shape[0], opts.classes
  vocab, shard = classes.size(w.shape[1]), classes.offset(w.shape[1])
  dtype = _checks.compute_dtype(h.dtype, w.dtype)
  if opts.reduction == "mean":
    count = _counted(labels, keep, opts, dtype)
    per_token = jnp.where(count > 0, 1 / jnp.maximum(count, 1), 0)
  else:
    per_token = jnp.ones((), dtype)
  # The loss and dX are combined over a split vocabulary (psum): they vary
  # with the tokens only.
  total = _full((), 0, dtype, h, labels, keep)
  dx = _full(h.shape, 0, h.dtype, h, labels, keep)
  dw = _full(w.shape, 0, dtype, h, w, labels, keep)
  start = 0
  for steps, rows in _chunks(n, opts.token_chunk):

    def step(i, carry, start=start, rows=rows):
      total, dx, dw = carry
      offset = start + i * rows
      h_c = _slice(h, offset, rows, 0)
      y_c = jax.lax.dynamic_slice_in_dim(labels, offset, rows)
      k_c = jax.lax.dynamic_slice_in_dim(keep, offset, rows)
      z, dcap = _logits(h_c, w, opts)
      m = classes.max(z)
      log_s = jnp.log(classes.sum(jnp.exp(z - m)))[:, 0]
      m = m[:, 0]
      label_logit = classes.sum(_label_logit(z, y_c - shard, w.shape[1])[:, None])[:, 0]
      sum_z = classes.sum(z)[:, 0] if opts.label_smoothing else None
      loss = _finish(_row_loss(m, log_s, label_logit, sum_z, vocab, opts), y_c, k_c, opts, vocab)
      scale = _row_scale(jnp.broadcast_to(per_token, (rows,)), y_c, k_c, opts, vocab)
      g = _chunk_grad(z, dcap, y_c, shard, m, log_s, scale, opts, vocab).astype(h.dtype)
      dx_c = jnp.matmul(g, w.T, preferred_element_type=dtype)
      if classes.axis_name is not None:
        dx_c = jax.lax.psum(dx_c, classes.axis_name)
      dx_c = dx_c.astype(h.dtype)
      dw = dw + jnp.matmul(h_c.T, g.astype(w.dtype), preferred_element_type=dtype)
      return total + jnp.sum(loss), jax.lax.dynamic_update_slice_in_dim(dx, dx_c, offset, axis=0), dw

    total, dx, dw = jax.lax.fori_loop(0, steps, step, (total, dx, dw))
    start += steps * rows
  value = total * per_token if opts.reduction == "mean" else total
  return value, (h, w, dx, dw.astype(w.dtype))


def _scalar_bwd(opts, res, upstream):
  h, w, dx, dw = res
  u = upstream.astype(_checks.compute_dtype(dx.dtype))
  return _cotangent_for((dx * u).astype(dx.dtype), h), _cotangent_for((dw * u).astype(dw.dtype), w), None, None


_scalar.defvjp(_scalar_fwd, _scalar_bwd)


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
    chunk_size: int | None = None,
    reduction: str = "none",
    axis_name: str | None = None,
) -> jax.Array:
  r"""Softmax cross-entropy of ``embeddings @ classifier`` that never holds the logits.

  .. math::
    z = h W, \qquad
    L = (1-\varepsilon)(\operatorname{lse}(z) - z_{c^*})
      + \varepsilon\big(\operatorname{lse}(z) - \tfrac{1}{V}\textstyle\sum_i z_i\big)
      + \zeta \operatorname{lse}(z)^2

  Equal to ``softmax_cross_entropy_with_integer_labels(embeddings @ classifier,
  labels, ...)`` with the same options (seed Eq. 4.2.37–4.2.40), computed in
  vocabulary (or token) chunks with an online LogSumExp (Eq. 4.2.35), so no
  N×V array exists; see the module docstring for the two kernels. With
  ``softcap`` c the logits are ``c·tanh(z/c)`` (Gemma 2).

  Args:
    embeddings: h, shape ``[..., D]`` (the last hidden states).
    classifier: W, shape ``[D, V]`` (the layout of a flax ``Dense`` kernel).
    labels: integer classes, shape ``[...]`` (the embeddings' leading shape).
    where: tokens to include, shape ``[...]``; excluded tokens give 0.
    ignore_index: a label value whose tokens give loss 0 and gradient 0.
    label_smoothing: ε in [0, 1].
    z_loss: ζ ≥ 0, the weight of log²Z.
    softcap: c > 0 or None.
    chunk_size: vocabulary chunk (per-example) or token chunk (scalar
      reductions); by default chosen so one chunk of float32 logits is about
      16 MiB.
    reduction: ``"none"`` (per-token losses, the default), ``"mean"`` (over
      tokens that are kept and not ignored) or ``"sum"``.
    axis_name: inside ``shard_map``, the mesh axis the vocabulary is split
      over: ``classifier`` is this device's ``[D, V/k]`` shard, the other
      arguments are replicated; the online statistics are combined with
      ``pmax``/``psum``, dW stays local and dX is summed over the shards.

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
  if w.ndim != 2:
    raise ValueError(f"`classifier` must have shape [D, V], got {w.shape}.")
  if w.shape[0] != h.shape[-1]:
    raise ValueError(
        f"`classifier` has {w.shape[0]} rows but `embeddings` has width {h.shape[-1]}: expected [D, V] with D = {h.shape[-1]}."
    )
  if labels.shape != h.shape[:-1]:
    raise ValueError(f"`labels` has shape {labels.shape}; expected the embeddings' leading shape {h.shape[:-1]}.")
  if reduction not in ("none", "mean", "sum"):
    raise ValueError(f"`reduction` must be one of ('none', 'mean', 'sum'), got {reduction!r}.")
  if softcap is not None:
    softcap = _checks.static_number(softcap, "softcap", low=0.0, low_open=True)
  if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
    raise ValueError(f"`chunk_size` must be a positive int or None, got {chunk_size!r}.")
  batch_shape = labels.shape
  keep = jnp.ones(batch_shape, bool) if where is None else _checks.broadcast_arg(jnp.asarray(where, bool), batch_shape, "where", "labels")
  h2, y2, k2 = h.reshape(-1, h.shape[-1]), labels.reshape(-1), keep.reshape(-1)
  n, vocab = h2.shape[0], w.shape[1]
  scalar = reduction != "none"
  opts = _Options(
      label_smoothing=_checks.static_number(label_smoothing, "label_smoothing", low=0.0, high=1.0),
      z_loss=_checks.static_number(z_loss, "z_loss", low=0.0),
      ignore_index=_checks.static_index(ignore_index, "ignore_index"),
      softcap=softcap,
      vocab_chunk=min(chunk_size, vocab) if chunk_size and not scalar else default_chunk_size(n, vocab),
      token_chunk=min(chunk_size, n) if chunk_size and scalar else default_chunk_size(vocab, n),
      reduction=reduction,
      classes=Classes(axis_name),
  )
  if reduction == "none":
    return _per_example(opts, h2, w, y2, k2).reshape(batch_shape)
  return _scalar(opts, h2, w, y2, k2)
