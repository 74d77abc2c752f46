"""No N×C temporaries: the fused CEs' compiled programs hold nothing of the logits' size.

``memory_analysis`` of the compiled value and value_and_grad (compiled only,
never run) at 1024×8192 logits (32 MiB of float32): the temporaries must stay
under 1 MiB, where one stored N×C array (a softmax, a float32 copy of 16-bit
logits, a stored select or a broadcast constant) is 16 to 32 MiB. Each of
those was a regression found with this measure (issue 15). 16-bit logits of
this size recompute their exps in reverse mode; below 16 MiB of float32 exps
they share the forward's (``xent_jax._fused._shares_exps``) and hold them.
Not covered: a per-class ``where`` mask. XLA:CPU does not fuse a boolean
operand into its reductions, so the masked kernels still hold N×C arrays
(32 to 160 MiB here; 15 of these cases failed before issue 15, 1 did not).
"""

import jax
import jax.numpy as jnp
import pytest

import xent_jax

N, C = 1024, 8192
LOSSES = {
  "int": (xent_jax.softmax_cross_entropy_with_integer_labels, lambda dtype: jax.ShapeDtypeStruct((N,), jnp.int32)),
  "soft": (xent_jax.softmax_cross_entropy, lambda dtype: jax.ShapeDtypeStruct((N, C), dtype)),
}


@pytest.mark.parametrize("kind", list(LOSSES))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("mode", ["value", "value_and_grad"])
def test_no_logit_sized_temporaries(kind, dtype, mode):
  fn, labels = LOSSES[kind]

  def total(z, y):
    return jnp.sum(fn(z, y))

  f = total if mode == "value" else jax.value_and_grad(total)
  compiled = jax.jit(f).lower(jax.ShapeDtypeStruct((N, C), dtype), labels(dtype)).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < 2**20, f"{temp / 2**20:.1f} MiB of temporaries (one N×C float32 array is {N * C * 4 / 2**20:.0f} MiB)"
