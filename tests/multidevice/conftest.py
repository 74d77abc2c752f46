"""These tests need 8 devices; tests/test_multidevice.py runs them in their own process with
XLA_FLAGS=--xla_force_host_platform_device_count=8, so the rest of the suite keeps one device."""

import jax

collect_ignore_glob = [] if jax.device_count() >= 8 else ["test_*.py"]
