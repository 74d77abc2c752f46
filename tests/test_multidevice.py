"""Runs tests/multidevice on 8 simulated CPU devices, in a process of its own."""

import os
import pathlib
import subprocess
import sys


def test_eight_device_suite():
  root = pathlib.Path(__file__).parents[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  run = subprocess.run(
    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/multidevice"],
    cwd=root,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-4000:]
  assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]
