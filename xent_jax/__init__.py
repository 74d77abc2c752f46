"""xent_jax: information-theoretic losses for JAX, fused, NaN-safe and optax-compatible."""

from jax.nn import log_softmax, logsumexp, softmax

from xent_jax import closed_forms, derivations, info
from xent_jax._classification import (
  binary_cross_entropy,
  kl_divergence,
  kl_divergence_with_log_targets,
  mse_on_probabilities,
  safe_softmax_cross_entropy,
  sigmoid_binary_cross_entropy,
  softmax_cross_entropy,
  softmax_cross_entropy_with_integer_labels,
)
from xent_jax._contrastive import (
  attention_weights,
  info_nce,
  mutual_information_lower_bound,
  ntxent,
  sigmoid_contrastive,
  supervised_contrastive,
)
from xent_jax._linear import linear_cross_entropy
from xent_jax._pytorch import cross_entropy

__version__ = "0.1.0"

__all__ = [
  "attention_weights",
  "binary_cross_entropy",
  "closed_forms",
  "cross_entropy",
  "derivations",
  "info",
  "info_nce",
  "kl_divergence",
  "kl_divergence_with_log_targets",
  "linear_cross_entropy",
  "log_softmax",
  "logsumexp",
  "mse_on_probabilities",
  "mutual_information_lower_bound",
  "ntxent",
  "safe_softmax_cross_entropy",
  "sigmoid_binary_cross_entropy",
  "sigmoid_contrastive",
  "softmax",
  "softmax_cross_entropy",
  "softmax_cross_entropy_with_integer_labels",
  "supervised_contrastive",
]
