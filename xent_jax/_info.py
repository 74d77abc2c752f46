"""Information measures on probability vectors (seed section 4.2.1).

Arguments follow the seed's order: the target distribution P first, then the
model distribution Q. All functions use the convention 0·log 0 = 0 (and
0·log q = 0 for any q), return +inf where q = 0 < p, and NaN where a
probability is negative or NaN.

Gradients at the edge of the simplex are the limits of the partial
derivatives, ±inf where those are infinite (∂H(P, Q)/∂p_i = -log q_i = +inf at
q_i = 0, ∂/∂q_i = -p_i/q_i), in every Jacobian entry and both autodiff modes,
with one convention: the derivative of p·log p at p = 0 is 0 (the one-sided
limit is -inf). 0 is the limit of the chain rule along any smooth path into
p = 0 (p = softmax(z): (log p + 1)·p(1 - p) → 0), so entropy(softmax(z)) keeps
a finite, exact gradient where a probability underflows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xent_jax import _checks, _limits
from xent_jax._checks import Axis


def _probabilities(p: jax.typing.ArrayLike, name: str) -> jax.Array:
  """Floating-point check, float32 upcast, and NaN for negative entries."""
  p = _checks.as_floating(p, name)
  p = p.astype(_checks.compute_dtype(p.dtype))
  return _checks.nan_where(~(p >= 0), p)


def _pair(p: jax.typing.ArrayLike, q: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
  return _checks.broadcast_pair(_probabilities(p, "p"), _probabilities(q, "q"), ("p", "q"))


def _xlogy(x: jax.Array, y: jax.Array) -> jax.Array:
  """x·log(y) with 0·log(y) = 0 for every y; ∂/∂x = log y, ∂/∂y = x/y (0 where x = 0)."""
  return jnp.where(x == 0, 0, x * jnp.log(y))


def _xlogx(x: jax.Array) -> jax.Array:
  """x·log(x) with 0·log 0 = 0; ∂/∂x = log x + 1, taken as 0 at x = 0 (see the module note)."""
  return jnp.where(x == 0, 0, x * jnp.log(x))


xlogy = _limits.elementwise(_xlogy, lambda x, y: (jnp.log(y), _limits.ratio(x, y)))
xlogx = _limits.elementwise(_xlogx, lambda x: (jnp.where(x == 0, 0, jnp.log(jnp.where(x == 0, 1, x)) + 1),))
_surprisal = _limits.elementwise(lambda p: -jnp.log(p), lambda p: (-_limits.ratio(jnp.ones_like(p), p),))


def _reduce(terms: jax.Array, axis: Axis, where: jax.typing.ArrayLike | None, base: float | None) -> jax.Array:
  scale = _checks.log_base_scale(base)
  return _checks.rescale(_checks.masked_sum(terms, axis, where, "p"), scale)


def self_information(p: jax.typing.ArrayLike, *, base: float | None = None) -> jax.Array:
  r"""Self-information (surprisal) of an event of probability ``p``, elementwise.

  .. math::
    I(x) = -\log_b p(x)

  Seed Eq. 4.2.1: base 2 gives bits, e (``None``) nats, 10 hartleys.

  Args:
    p: probabilities, any shape.
    base: logarithm base, a static number > 0 and != 1; ``None`` for nats.

  Returns:
    ``-log_base(p)``, same shape as ``p``; +inf where ``p = 0``, NaN where ``p < 0``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from xent_jax import info
    >>> print(info.self_information(jnp.array([0.5, 0.25, 0.125]), base=2))
    [1. 2. 3.]
  """
  scale = _checks.log_base_scale(base)
  return _checks.rescale(_surprisal(_probabilities(p, "p")), scale)


def entropy(
  p: jax.typing.ArrayLike,
  *,
  axis: Axis = -1,
  base: float | None = None,
  where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Shannon entropy of the distribution ``p`` along ``axis``.

  .. math::
    H(P) = -\sum_i p_i \log_b p_i = \mathbb{E}_{x \sim P}[I(x)]

  Seed Eq. 4.2.2–4.2.3, with 0·log 0 = 0. The gradient at ``p_i = 0`` is taken
  as 0 (the one-sided derivative there is +inf).

  Args:
    p: probabilities, shape ``[..., n]``.
    axis: axis or axes of the distribution.
    base: logarithm base (static); ``None`` for nats.
    where: elements to include, broadcastable to ``p``.

  Returns:
    entropy with the ``axis`` dimensions removed.

  Examples:
    >>> import jax.numpy as jnp
    >>> from xent_jax import info
    >>> print(info.entropy(jnp.array([[0.5, 0.5], [1.0, 0.0]]), base=2))
    [1. 0.]
  """
  p = _probabilities(p, "p")
  return _reduce(-xlogx(p), axis, where, base)


def cross_entropy(
  p: jax.typing.ArrayLike,
  q: jax.typing.ArrayLike,
  *,
  axis: Axis = -1,
  base: float | None = None,
  where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Cross-entropy H(P, Q) of the model ``q`` under the target ``p``.

  .. math::
    H(P, Q) = -\sum_i p_i \log_b q_i = H(P) + D_{KL}(P \| Q)

  Seed Eq. 4.2.7. For logits rather than probabilities use the fused
  :func:`xent_jax.softmax_cross_entropy`.

  Args:
    p: target probabilities, shape ``[..., n]``.
    q: model probabilities, broadcastable with ``p``.
    axis: axis or axes of the distribution.
    base: logarithm base (static); ``None`` for nats.
    where: elements to include, broadcastable to ``p``.

  Returns:
    cross-entropy with the ``axis`` dimensions removed; +inf where q = 0 < p.

  Examples:
    >>> import jax.numpy as jnp
    >>> from xent_jax import info
    >>> print(info.cross_entropy(jnp.array([1.0, 0.0]), jnp.array([0.25, 0.75]), base=2))
    2.0
  """
  p, q = _pair(p, q)
  return _reduce(-xlogy(p, q), axis, where, base)


def kl_divergence(
  p: jax.typing.ArrayLike,
  q: jax.typing.ArrayLike,
  *,
  axis: Axis = -1,
  base: float | None = None,
  where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Kullback-Leibler divergence D_KL(P ‖ Q) between probability vectors.

  .. math::
    D_{KL}(P \| Q) = \sum_i p_i \log_b \frac{p_i}{q_i}

  Seed Eq. 4.2.4–4.2.6; elementwise terms equal ``scipy.special.rel_entr`` for
  valid probabilities (scipy returns +inf for negative inputs, this returns NaN).
  Not symmetric. Note the argument order differs from
  :func:`xent_jax.kl_divergence`, which follows optax: (log_predictions, targets).

  Args:
    p: target probabilities, shape ``[..., n]``.
    q: model probabilities, broadcastable with ``p``.
    axis: axis or axes of the distribution.
    base: logarithm base (static); ``None`` for nats.
    where: elements to include, broadcastable to ``p``.

  Returns:
    the divergence with the ``axis`` dimensions removed; 0 where ``p_i = 0``
    contributes, +inf where q = 0 < p.

  Examples:
    >>> import jax.numpy as jnp
    >>> from xent_jax import info
    >>> print(round(float(info.kl_divergence(jnp.array([0.5, 0.5]), jnp.array([0.25, 0.75]), base=2)), 6))
    0.207519
  """
  p, q = _pair(p, q)
  return _reduce(xlogx(p) - xlogy(p, q), axis, where, base)
