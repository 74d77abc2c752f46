"""InfoNCE, its contrastive relatives, and the link to attention (seed Eq. 4.2.14, "4.4").

InfoNCE is the fused softmax cross-entropy over similarity scores: the scores
divided by the temperature are the logits and the positive's index is the
label, so every loss here inherits the fused loss's gradient p̂ - p and its
NaN safety. Scores are computed by matmul with float32 accumulation (bf16
embeddings stay bf16 in memory); nothing of size B×B×D is built.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from xent_jax import _checks
from xent_jax._classification import (
  sigmoid_binary_cross_entropy,
  softmax_cross_entropy,
  softmax_cross_entropy_with_integer_labels,
)

ArrayLike = jax.typing.ArrayLike


def _embeddings(x: ArrayLike, name: str, ndim: int) -> jax.Array:
  x = _checks.as_floating(x, name)
  if x.ndim != ndim:
    raise ValueError(f"`{name}` must have rank {ndim}, got shape {x.shape}.")
  return x


def _same_width(d: int, other: jax.Array, name: str) -> None:
  if other.shape[-1] != d:
    raise ValueError(f"`{name}` has embedding dimension {other.shape[-1]}; expected {d}, the query's.")


def _labels_per_row(y: jax.Array, e: jax.Array) -> jax.Array:
  if y.shape != e.shape[:1]:
    raise ValueError(f"`labels` has shape {y.shape}; expected ({e.shape[0]},), one per embedding.")
  return y


def _normalize(x: jax.Array, min_squared_norm: float | None = None) -> jax.Array:
  """x / ‖x‖ on the last axis; ``min_squared_norm`` floors ‖x‖² as optax's cosine similarity does."""
  x32 = x.astype(_checks.compute_dtype(x.dtype))
  squared = jnp.sum(jnp.square(x32), axis=-1, keepdims=True)
  if min_squared_norm is None:
    norm = jnp.maximum(jnp.sqrt(squared), jnp.finfo(x32.dtype).tiny)
  else:
    norm = jnp.sqrt(jnp.maximum(squared, min_squared_norm))
  return (x32 / norm).astype(x.dtype)


def _scores(a: jax.Array, b: jax.Array, spec: str) -> jax.Array:
  """Similarity scores with float32 (or wider) accumulation."""
  return jnp.einsum(spec, a, b, preferred_element_type=_checks.compute_dtype(a.dtype, b.dtype))


def _logit_scale(temperature: ArrayLike, dtype: jnp.dtype, max_logit_scale: float | None = None) -> jax.Array:
  """The logit scale 1/τ in ``dtype``, capped at ``max_logit_scale`` only when one is given.

  A static τ (a Python or numpy number) must be > 0; a traced τ ≤ 0 or NaN
  is a data fault and makes the scale, hence the loss, NaN.
  """
  if isinstance(temperature, (int, float, np.number, np.ndarray)) and np.ndim(temperature) == 0 and not temperature > 0:
    raise ValueError(f"`temperature` must be > 0, got {temperature!r}.")
  t = jnp.asarray(temperature)
  if t.ndim != 0:
    raise ValueError(f"`temperature` must be a scalar, got shape {t.shape}.")
  t = t.astype(dtype)
  scale = 1 / _checks.nan_where(~(t > 0), t)  # NaN before the division: no 1/0, a NaN gradient in τ
  if max_logit_scale is None:
    return scale
  return jnp.minimum(scale, _checks.static_number(max_logit_scale, "max_logit_scale", low=0.0, low_open=True))


def info_nce(
  query: ArrayLike,
  positive_key: ArrayLike,
  negative_keys: ArrayLike | None = None,
  *,
  temperature: ArrayLike = 0.1,
  negative_mode: str = "unpaired",
  in_batch_negatives: bool = False,
  symmetric: bool = False,
  normalize: bool = True,
  max_logit_scale: float | None = None,
  axis_name: str | None = None,
) -> jax.Array:
  r"""InfoNCE: softmax cross-entropy of each query against its positive key.

  .. math::
    L_i = -\log \frac{e^{s(q_i, k_i^+)/\tau}}{\sum_{k \in \{k_i^+\} \cup N_i} e^{s(q_i, k)/\tau}}

  with the scores s(q, k) = q·k (cosine similarity when ``normalize``) as the
  logits of :func:`softmax_cross_entropy_with_integer_labels` and the
  positive's index as the label (the seed's announced section 4.4). With
  ``temperature = √d`` and ``normalize=False`` the loss is -log of the
  attention weight softmax(QKᵀ/√d) each query puts on its positive key.

  Args:
    query: ``[B, D]``.
    positive_key: ``[B, D]``, the positive for each query.
    negative_keys: ``None`` for in-batch negatives (the other queries'
      positives, as CLIP and SimCLR); ``[M, D]`` shared by all queries with
      ``negative_mode="unpaired"``; ``[B, M, D]`` per query with ``"paired"``.
    temperature: τ > 0, a number or a traced scalar (learned), used as
      given: a traced τ ≤ 0 or NaN gives NaN losses (a static one raises).
    negative_mode: ``"unpaired"`` or ``"paired"``, as above.
    in_batch_negatives: with ``negative_keys``, also use the other queries'
      positives as negatives (hard negatives plus in-batch negatives, as DPR).
    symmetric: CLIP's loss, the mean of the query→key and key→query
      directions (in-batch negatives only).
    normalize: L2-normalise the embeddings first.
    max_logit_scale: ``None`` (the default) leaves 1/τ as it is; a number
      caps it, as CLIP caps its learned logit scale at 100
      (``max_logit_scale=100.0``); the gradient in τ is 0 where the cap holds.
    axis_name: inside ``shard_map`` over the batch, the mesh axis it is split
      over: the in-batch negatives are the keys of every device
      (``all_gather``; its transpose, a reduce-scatter, sends each key its
      gradient from every device's queries), the labels offset by the
      device's index. Needs in-batch negatives.

  Returns:
    per-query losses ``[B]`` (this device's queries under ``axis_name``),
    float32 for 16-bit embeddings.

  Examples:
    >>> import jax.numpy as jnp
    >>> import xent_jax
    >>> jnp.set_printoptions(precision=4)
    >>> q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> print(xent_jax.info_nce(q, q, temperature=1.0))  # log(1 + e^-1)
    [0.3133 0.3133]
  """
  q = _embeddings(query, "query", 2)
  k = _embeddings(positive_key, "positive_key", 2)
  if k.shape != q.shape:
    raise ValueError(f"`positive_key` has shape {k.shape}; expected the query's shape {q.shape}.")
  if negative_mode not in ("unpaired", "paired"):
    raise ValueError(f"`negative_mode` must be 'unpaired' or 'paired', got {negative_mode!r}.")
  scale = _logit_scale(temperature, _checks.compute_dtype(q.dtype, k.dtype), max_logit_scale)
  if normalize:
    q, k = _normalize(q), _normalize(k)
  b = q.shape[0]
  if axis_name is not None and negative_keys is not None and not in_batch_negatives:
    raise ValueError(
      "`axis_name` shares in-batch negatives across devices: pass `negative_keys=None` or `in_batch_negatives=True`."
    )

  def gather(x: jax.Array) -> jax.Array:
    return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)

  labels = jnp.arange(b) + (0 if axis_name is None else jax.lax.axis_index(axis_name) * b)
  if negative_keys is None:
    loss = softmax_cross_entropy_with_integer_labels(_scores(q, gather(k), "id,jd->ij") * scale, labels)
    if symmetric:
      backward = softmax_cross_entropy_with_integer_labels(_scores(k, gather(q), "id,jd->ij") * scale, labels)
      loss = (loss + backward) / 2
    return loss
  if symmetric:
    raise ValueError("`symmetric=True` needs in-batch negatives: pass `negative_keys=None`.")
  n = _embeddings(negative_keys, "negative_keys", 2 if negative_mode == "unpaired" else 3)
  _same_width(q.shape[-1], n, "negative_keys")
  if negative_mode == "paired" and n.shape[0] != b:
    raise ValueError(f"`negative_keys` has {n.shape[0]} rows for paired negatives; expected {b}, one per query.")
  if normalize:
    n = _normalize(n)
  negatives = _scores(q, n, "id,md->im" if negative_mode == "unpaired" else "id,imd->im")
  if in_batch_negatives:
    logits = jnp.concatenate([_scores(q, gather(k), "id,jd->ij"), negatives], axis=-1) * scale
    return softmax_cross_entropy_with_integer_labels(logits, labels)
  positives = _scores(q, k, "id,id->i")[:, None]
  logits = jnp.concatenate([positives, negatives], axis=-1) * scale
  return softmax_cross_entropy_with_integer_labels(logits, jnp.zeros(b, jnp.int32))


def supervised_contrastive(
  embeddings: ArrayLike,
  labels: ArrayLike,
  *,
  temperature: ArrayLike = 0.1,
  normalize: bool = True,
  max_logit_scale: float | None = None,
) -> jax.Array:
  r"""Supervised contrastive loss (SupCon, "L_out"): every same-label anchor is a positive.

  .. math::
    L_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)} \log
      \frac{e^{s_{ip}/\tau}}{\sum_{a \ne i} e^{s_{ia}/\tau}}

  This is the soft-label fused cross-entropy with target 1/|P(i)| on each
  positive and the anchor itself masked out. An anchor with no positive has
  loss 0 (it is excluded, not NaN).

  Args:
    embeddings: ``[B, D]``.
    labels: integer class of each embedding, ``[B]``.
    temperature: τ > 0, number or traced scalar, used as given (a traced
      τ ≤ 0 or NaN gives NaN).
    normalize: L2-normalise the embeddings first.
    max_logit_scale: a cap on 1/τ (CLIP's 100), or ``None`` for none.

  Returns:
    per-anchor losses ``[B]``; average over anchors with a positive to get
    the usual scalar.

  Examples:
    >>> import jax.numpy as jnp
    >>> import xent_jax
    >>> e = jnp.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    >>> jnp.set_printoptions(precision=4)
    >>> print(xent_jax.supervised_contrastive(e, jnp.array([0, 0, 1]), temperature=1.0))
    [0.3146 0.3424 0.    ]
  """
  e = _embeddings(embeddings, "embeddings", 2)
  y = _labels_per_row(_checks.as_integer(labels, "labels"), e)
  if normalize:
    e = _normalize(e)
  logits = _scores(e, e, "id,jd->ij")
  logits = logits * _logit_scale(temperature, logits.dtype, max_logit_scale)
  not_self = ~jnp.eye(e.shape[0], dtype=bool)
  positive = (y[:, None] == y[None, :]) & not_self
  count = jnp.sum(positive, axis=-1, keepdims=True)
  targets = positive.astype(logits.dtype) / jnp.maximum(count, 1).astype(logits.dtype)
  return softmax_cross_entropy(logits, targets, where=not_self)


def ntxent(embeddings: ArrayLike, labels: ArrayLike, temperature: ArrayLike = 0.07) -> jax.Array:
  r"""NT-Xent with optax's signature and semantics, as a B×B matmul.

  .. math::
    L = \frac{1}{|\mathcal{P}|} \sum_{(i,j) \in \mathcal{P}}
      -\log \frac{e^{s_{ij}/\tau}}{e^{s_{ij}/\tau} + \sum_{k: y_k \ne y_i} e^{s_{ik}/\tau}}

  over the positive pairs 𝒫 (same label, i ≠ j), s the cosine similarity
  with optax's floor on the squared norms (the machine epsilon of the
  embeddings' dtype). Each pair's loss is softplus(logsumexp_negatives -
  s_ij/τ), so only B×B scores are held (optax builds B×B×D). τ is used as
  given, never clamped. Where optax differs: with no positive pair at all the
  loss is 0 (optax: NaN); a traced τ ≤ 0 or NaN gives NaN (optax: a finite
  number); 16-bit embeddings give a float32 loss.

  Args:
    embeddings: ``[B, D]``.
    labels: ``[B]``, any dtype optax takes (integer, boolean or float group
      ids); equal labels mark positives.
    temperature: τ > 0, a number or a traced scalar.

  Returns:
    the scalar mean over positive pairs.

  Examples:
    >>> import jax.numpy as jnp
    >>> import xent_jax
    >>> e = jnp.array([[1.0, 0.0], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9]])
    >>> print(round(float(xent_jax.ntxent(e, jnp.array([0, 0, 1, 1]))), 4))
    0.0
  """
  e = _embeddings(embeddings, "embeddings", 2)
  y = _labels_per_row(jnp.asarray(labels), e)
  u = _normalize(e, min_squared_norm=float(jnp.finfo(e.dtype).eps))
  s = _scores(u, u, "id,jd->ij")
  s = s * _logit_scale(temperature, s.dtype)
  same = y[:, None] == y[None, :]
  positive = same & ~jnp.eye(e.shape[0], dtype=bool)
  lse_negatives = jax.nn.logsumexp(jnp.where(same, -jnp.inf, s), axis=-1, keepdims=True)
  pair_loss = jnp.where(positive, jax.nn.softplus(lse_negatives - jnp.where(positive, s, 0)), 0)
  return jnp.sum(pair_loss) / jnp.maximum(jnp.sum(positive), 1).astype(pair_loss.dtype)


def sigmoid_contrastive(
  query: ArrayLike,
  key: ArrayLike,
  *,
  logit_scale: ArrayLike = 10.0,
  logit_bias: ArrayLike = -10.0,
  normalize: bool = True,
) -> jax.Array:
  r"""SigLIP's pairwise sigmoid loss: every (query, key) pair is a binary problem.

  .. math::
    L_i = \sum_j \mathrm{BCE}\big(t\, s(q_i, k_j) + b,\; 1\{i = j\}\big)

  built on :func:`sigmoid_binary_cross_entropy`. ``logit_scale`` t and
  ``logit_bias`` b may be traced (SigLIP learns t = exp(t') from t' = log 10
  and b from -10).

  Args:
    query: ``[B, D]``.
    key: ``[B, D]``; ``key[i]`` is the positive of ``query[i]``.
    logit_scale: t > 0.
    logit_bias: b.
    normalize: L2-normalise the embeddings first.

  Returns:
    per-query losses ``[B]``; SigLIP's loss is their mean.

  Examples:
    >>> import jax.numpy as jnp
    >>> import xent_jax
    >>> jnp.set_printoptions(precision=4)
    >>> q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> print(xent_jax.sigmoid_contrastive(q, q, logit_scale=1.0, logit_bias=0.0))
    [1.0064 1.0064]
  """
  q = _embeddings(query, "query", 2)
  k = _embeddings(key, "key", 2)
  if k.shape != q.shape:
    raise ValueError(f"`key` has shape {k.shape}; expected the query's shape {q.shape}.")
  if normalize:
    q, k = _normalize(q), _normalize(k)
  s = _scores(q, k, "id,jd->ij")
  logits = s * jnp.asarray(logit_scale).astype(s.dtype) + jnp.asarray(logit_bias).astype(s.dtype)
  return jnp.sum(sigmoid_binary_cross_entropy(logits, jnp.eye(q.shape[0], dtype=s.dtype)), axis=-1)


def attention_weights(query: ArrayLike, key: ArrayLike, *, scale: float | None = None) -> jax.Array:
  r"""Attention weights softmax(QKᵀ/√d_k) (seed Eq. 4.2.14), rows summing to 1.

  Args:
    query: ``[..., T, D]``.
    key: ``[..., S, D]``.
    scale: the factor on QKᵀ; ``None`` for 1/√d_k.

  Returns:
    ``[..., T, S]`` row-stochastic weights: the same softmax InfoNCE applies
    to its scores.

  Examples:
    >>> import jax.numpy as jnp
    >>> import xent_jax
    >>> print(xent_jax.attention_weights(jnp.zeros((1, 4)), jnp.ones((2, 4))))
    [[0.5 0.5]]
  """
  q = _checks.as_floating(query, "query")
  k = _checks.as_floating(key, "key")
  _same_width(q.shape[-1], k, "key")
  s = _scores(q, k, "...td,...sd->...ts")
  return jax.nn.softmax(s * (1 / math.sqrt(q.shape[-1]) if scale is None else scale), axis=-1)


def mutual_information_lower_bound(loss: ArrayLike, num_candidates: int) -> jax.Array:
  r"""The InfoNCE bound I(X; Y) ≥ log N - L (CPC), in nats.

  Args:
    loss: the mean InfoNCE loss.
    num_candidates: N, the positive plus the negatives each query scores.

  Returns:
    the lower bound; it can never exceed log N.

  Examples:
    >>> import xent_jax
    >>> print(round(float(xent_jax.mutual_information_lower_bound(0.5, 8)), 4))
    1.5794
  """
  if num_candidates < 1:
    raise ValueError(f"`num_candidates` must be ≥ 1, got {num_candidates!r}.")
  return math.log(num_candidates) - jnp.asarray(loss)
