"""Information measures on probability vectors: I, H, H(P, Q), KL (seed 4.2.1)."""

from xent_jax._info import cross_entropy, entropy, kl_divergence, self_information

__all__ = ["cross_entropy", "entropy", "kl_divergence", "self_information"]
