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


def torch_cross_entropy(z, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
  """torch.nn.functional.cross_entropy's documented formulas on (N, C) inputs, and ∂/∂z.

  Class indices: ℓ_n = (1-ε) w_{y_n} (-log p̂_{n,y_n}) + (ε/C) Σ_c w_c (-log p̂_{n,c}),
  0 where y_n = ignore_index; "mean" divides by Σ_{n not ignored} w_{y_n}.
  Probabilities: ℓ_n = -Σ_c w_c ((1-ε) y_{n,c} + ε/C) log p̂_{n,c}; "mean" divides by N.
  Each ℓ_n is -Σ_c q_{n,c} log p̂_{n,c}, so ∂ℓ_n/∂z_n = p̂_n Σ_c q_{n,c} - q_n.
  """
  z = np.asarray(z, np.float64)
  n, c = z.shape
  w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
  eps = label_smoothing
  target = np.asarray(target)
  if np.issubdtype(target.dtype, np.integer):
    ignored = target == ignore_index
    y = np.where(ignored, 0, target)
    q = (1 - eps) * w[y][:, None] * np.eye(c)[y] + eps / c * w[None, :]
    q = np.where(ignored[:, None], 0.0, q)
    denominator = np.sum(np.where(ignored, 0.0, w[y]))
  else:
    q = w[None, :] * ((1 - eps) * target.astype(np.float64) + eps / c)
    denominator = n
  log_p = log_softmax(z)
  per = -np.sum(q * log_p, axis=-1)
  grad = np.exp(log_p) * q.sum(-1, keepdims=True) - q
  if reduction == "none":
    return per, grad
  if reduction == "sum":
    return per.sum(), grad
  return per.sum() / denominator, grad / denominator
