"""The derivation registry: every equation of seed section 4.2, checked by the machine."""

from xent_jax._derivations import (
  REGISTRY,
  Check,
  CheckResult,
  check_gradient,
  covered_equations,
  error,
  run,
  run_check,
  select,
  ulps,
)

__all__ = [
  "REGISTRY",
  "Check",
  "CheckResult",
  "check_gradient",
  "covered_equations",
  "error",
  "run",
  "run_check",
  "select",
  "ulps",
]
