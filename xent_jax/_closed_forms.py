"""The seed's closed-form derivatives, written out as the equations state them.

These are the "by hand" side of every gradient check: tests and the derivation
report hold ``jax.grad``, ``jax.jacfwd`` and ``jax.jacrev`` against them. They
work on the last axis and compute in float32 or wider. The unfused chain
softmax → log → weighted sum (Eq. 4.2.17) is here too, as the reference the
fused loss is compared with: unlike the fused loss it supports forward mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xent_jax import _checks

ArrayLike = jax.typing.ArrayLike


def _floats(*arrays: ArrayLike) -> list[jax.Array]:
  xs = [jnp.asarray(a) for a in arrays]
  dtype = _checks.compute_dtype(*[x.dtype for x in xs])
  return [x.astype(dtype) for x in xs]


def sigmoid_derivative(logits: ArrayLike) -> jax.Array:
  r"""dσ/dz = σ(z)(1 - σ(z)), elementwise (seed Eq. 4.2.20).

  Examples:
    >>> import jax.numpy as jnp
    >>> from xent_jax import closed_forms
    >>> print(closed_forms.sigmoid_derivative(jnp.array([0.0])))
    [0.25]
  """
  (z,) = _floats(logits)
  p = jax.nn.sigmoid(z)
  return p * (1 - p)


def softmax_jacobian(logits: ArrayLike) -> jax.Array:
  r"""J = ∂p̂/∂z = diag(p̂) - p̂p̂ᵀ over the last axis (seed Eq. 4.2.26–4.2.28, 4.2.32).

  J is symmetric and positive semi-definite (vᵀJv = Var_p̂(v) ≥ 0, Eq. 4.2.33;
  the seed's "negative semi-definite" is a slip); its rows and columns sum to 0.

  Args:
    logits: shape ``[..., C]``.

  Returns:
    shape ``[..., C, C]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from xent_jax import closed_forms
    >>> print(closed_forms.softmax_jacobian(jnp.zeros(2)))
    [[ 0.25 -0.25]
     [-0.25  0.25]]
  """
  (z,) = _floats(logits)
  p = jax.nn.softmax(z, axis=-1)
  return jnp.einsum("...i,ij->...ij", p, jnp.eye(p.shape[-1], dtype=p.dtype)) - p[..., :, None] * p[..., None, :]


def softmax_cross_entropy_gradient(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  r"""∂L/∂z = p̂·Σp - p for L = -Σ p log softmax(z) (seed Eq. 4.2.29–4.2.31, 4.2.40).

  The seed writes p̂ - p, which holds when Σp = 1 (one-hot or any normalised
  target); the Σp factor keeps it right for unnormalised targets.

  Examples:
    >>> import jax.numpy as jnp
    >>> from xent_jax import closed_forms
    >>> print(closed_forms.softmax_cross_entropy_gradient(jnp.zeros(2), jnp.array([1.0, 0.0])))
    [-0.5  0.5]
  """
  z, p = _floats(logits, labels)
  return jax.nn.softmax(z, axis=-1) * jnp.sum(p, axis=-1, keepdims=True) - p


def sigmoid_binary_cross_entropy_gradient(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  r"""∂L/∂z = σ(z) - y for sigmoid binary cross-entropy (seed Eq. 4.2.22).

  Examples:
    >>> import jax.numpy as jnp
    >>> from xent_jax import closed_forms
    >>> print(closed_forms.sigmoid_binary_cross_entropy_gradient(jnp.array([0.0]), jnp.array([1.0])))
    [-0.5]
  """
  z, y = _floats(logits, labels)
  return jax.nn.sigmoid(z) - y


def binary_cross_entropy_gradient(probabilities: ArrayLike, labels: ArrayLike) -> jax.Array:
  r"""∂L/∂p̂ = -(y/p̂ - (1-y)/(1-p̂)) for BCE on probabilities (seed Eq. 4.2.19).

  Examples:
    >>> import jax.numpy as jnp
    >>> from xent_jax import closed_forms
    >>> print(closed_forms.binary_cross_entropy_gradient(jnp.array([0.5]), jnp.array([1.0])))
    [-2.]
  """
  p, y = _floats(probabilities, labels)
  return -(y / p - (1 - y) / (1 - p))


def cross_entropy_probability_gradient(probabilities: ArrayLike, labels: ArrayLike) -> jax.Array:
  r"""∂L/∂p̂_i = -p_i/p̂_i for L = -Σ p_i log p̂_i (seed Eq. 4.2.25).

  Examples:
    >>> import jax.numpy as jnp
    >>> from xent_jax import closed_forms
    >>> print(closed_forms.cross_entropy_probability_gradient(jnp.array([0.5, 0.5]), jnp.array([1.0, 0.0])))
    [-2. -0.]
  """
  q, p = _floats(probabilities, labels)
  return -p / q


def sigmoid_mse_gradient(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  r"""∂/∂z (σ(z) - y)² = 2(σ(z) - y)σ(z)(1 - σ(z)) (seed, after Eq. 4.2.22).

  Vanishes as σ(z) saturates at 0 or 1 whatever y is: the seed's argument for
  cross-entropy over squared error.

  Examples:
    >>> import jax.numpy as jnp
    >>> from xent_jax import closed_forms
    >>> print(closed_forms.sigmoid_mse_gradient(jnp.array([0.0]), jnp.array([1.0])))
    [-0.25]
  """
  z, y = _floats(logits, labels)
  p = jax.nn.sigmoid(z)
  return 2 * (p - y) * p * (1 - p)


def mse_on_probabilities_gradient(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  r"""∂/∂z Σ_i (p_i - p̂_i)² = 2 J (p̂ - p) = 2 p̂ ⊙ (d - ⟨p̂, d⟩), d = p̂ - p (seed Eq. 4.2.18).

  Examples:
    >>> import jax.numpy as jnp
    >>> from xent_jax import closed_forms
    >>> print(closed_forms.mse_on_probabilities_gradient(jnp.zeros(2), jnp.array([1.0, 0.0])))
    [-0.5  0.5]
  """
  z, p = _floats(logits, labels)
  p_hat = jax.nn.softmax(z, axis=-1)
  d = p_hat - p
  return 2 * p_hat * (d - jnp.sum(p_hat * d, axis=-1, keepdims=True))


def unfused_softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  r"""The naive chain z → softmax → log → -Σ p log p̂ (seed Eq. 4.2.17).

  The reference the fused loss is compared with. It overflows, returns -inf
  logs and NaN where the fused loss stays finite (Eq. 4.2.34): use it only to
  check, never to train.

  Examples:
    >>> import jax.numpy as jnp
    >>> from xent_jax import closed_forms
    >>> print(round(float(closed_forms.unfused_softmax_cross_entropy(jnp.array([0.0, 0.0]), jnp.array([1.0, 0.0]))), 6))
    0.693147
  """
  z, p = _floats(logits, labels)
  e = jnp.exp(z)
  return -jnp.sum(p * jnp.log(e / jnp.sum(e, axis=-1, keepdims=True)), axis=-1)
