"""The seed's closed-form derivatives, the by-hand side of every gradient check."""

from xent_jax._closed_forms import (
  binary_cross_entropy_gradient,
  cross_entropy_probability_gradient,
  mse_on_probabilities_gradient,
  sigmoid_binary_cross_entropy_gradient,
  sigmoid_derivative,
  sigmoid_mse_gradient,
  softmax_cross_entropy_gradient,
  softmax_jacobian,
  unfused_softmax_cross_entropy,
)

__all__ = [
  "binary_cross_entropy_gradient",
  "cross_entropy_probability_gradient",
  "mse_on_probabilities_gradient",
  "sigmoid_binary_cross_entropy_gradient",
  "sigmoid_derivative",
  "sigmoid_mse_gradient",
  "softmax_cross_entropy_gradient",
  "softmax_jacobian",
  "unfused_softmax_cross_entropy",
]
