"""``python -m xent_jax``: a short self-check of the fused losses."""

import sys

import jax
import jax.numpy as jnp

import xent_jax
from xent_jax import closed_forms


def main() -> int:
  z = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
  labels = jnp.array([0, 1])
  grad = jax.grad(lambda z: jnp.sum(xent_jax.softmax_cross_entropy_with_integer_labels(z, labels)))(z)
  closed = closed_forms.softmax_cross_entropy_gradient(z, jax.nn.one_hot(labels, 3))
  err = float(jnp.max(jnp.abs(grad - closed)))
  ok = err < 1e-6
  print(f"Eq. 4.2.40  grad of fused CE = p̂ - p   max error {err:.2e}  {'pass' if ok else 'FAIL'}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
