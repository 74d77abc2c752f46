"""Float64 numpy/scipy references, written independently of xent_jax."""

import numpy as np
from scipy import special


def log_softmax(z: np.ndarray, where=None) -> np.ndarray:
  z = np.asarray(z, np.float64)
  if where is not None:
    z = np.where(where, z, -np.inf)
  with np.errstate(invalid="ignore"):
    return z - special.logsumexp(z, axis=-1, keepdims=True)


def softmax_cross_entropy(z, p, where=None) -> np.ndarray:
  """-Σ p log softmax(z), 0·log 0 = 0, rows with nothing included give 0."""
  p = np.asarray(p, np.float64)
  lq = log_softmax(z, where)
  keep = p != 0 if where is None else (p != 0) & where
  with np.errstate(invalid="ignore"):
    out = -np.sum(np.where(keep, p * lq, 0.0), axis=-1)
  if where is not None:
    out = np.where(np.any(where, axis=-1), out, 0.0)
  return out


def integer_cross_entropy(z, labels, where=None) -> np.ndarray:
  """logsumexp over the included classes minus the label's logit (read unmasked, as optax)."""
  z = np.asarray(z, np.float64)
  label_logit = np.take_along_axis(z, np.asarray(labels)[..., None], -1)[..., 0]
  lse = special.logsumexp(z if where is None else np.where(where, z, -np.inf), axis=-1)
  with np.errstate(invalid="ignore"):
    out = lse - label_logit
  return out if where is None else np.where(np.any(where, -1), out, 0.0)


def softmax_cross_entropy_grad(z, p, where=None) -> np.ndarray:
  p = np.asarray(p, np.float64)
  if where is not None:
    p = np.where(where, p, 0.0)
  q = np.exp(log_softmax(z, where))
  g = q * p.sum(-1, keepdims=True) - p
  if where is not None:
    g = np.where(np.any(where, -1, keepdims=True), np.where(where, g, 0.0), 0.0)
  return g


def sigmoid_bce(z, y) -> np.ndarray:
  z, y = np.asarray(z, np.float64), np.asarray(y, np.float64)
  return -(y * special.log_expit(z) + (1 - y) * special.log_expit(-z))


def softmax(z) -> np.ndarray:
  return special.softmax(np.asarray(z, np.float64), axis=-1)
