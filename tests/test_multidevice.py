"""Runs tests/multidevice on 8 simulated CPU devices, in a process of its own.

The process starts when the session's collection finishes (``start_in_background``, called from
``tests/conftest.py``), so that it runs beside the in-process tests; the test waits for it (``tests/_background.py``).
"""

import functools
import subprocess

import _background

BACKGROUND_FOR = ("test_eight_device_suite",)


@functools.cache
def start_in_background() -> subprocess.Popen:
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  return _background.start(["tests/multidevice"], env=env)


def stop_in_background() -> None:
  if start_in_background.cache_info().currsize:
    _background.stop(start_in_background())


def test_eight_device_suite():
  process = start_in_background()
  text = _background.output(process)
  assert process.returncode == 0, text[-12000:]
  assert " passed" in text and "skipped" not in text, text[-2000:]
