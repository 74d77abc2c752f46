"""Runs tests/multidevice on 8 simulated CPU devices, in a process of its own.

The process starts when the session's collection finishes (``start_in_background``, called from
``tests/conftest.py``), so that it runs beside the in-process tests; the test waits for it.
"""

import functools
import os
import pathlib
import subprocess
import sys

TIMEOUT_S = 900
BACKGROUND_FOR = ("test_eight_device_suite",)


@functools.cache
def start_in_background() -> subprocess.Popen:
  root = pathlib.Path(__file__).parents[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  # Its output waits in the pipe until the test reads it (the child blocks if the pipe fills, never deadlocks).
  return subprocess.Popen(
    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/multidevice"],
    cwd=root,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def stop_in_background() -> None:
  if start_in_background.cache_info().currsize:
    start_in_background().kill()


def test_eight_device_suite():
  process = start_in_background()
  try:
    text, _ = process.communicate(timeout=TIMEOUT_S)
  finally:
    process.kill()
  assert process.returncode == 0, text[-12000:]
  assert " passed" in text and "skipped" not in text, text[-2000:]
