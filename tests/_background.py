"""The child pytest processes that run beside the session, and what their tests found.

Two kinds of job: a module with a job of its own (``tests/test_multidevice.py``'s 8-device suite) starts it
with ``start`` from its ``start_in_background()``, which ``tests/conftest.py`` calls when collection finishes,
and its waiting test reads the output with ``output``; and the test files that ``tests/conftest.py`` lists in
``IN_CHILD`` run in one child session (``ChildSession``, given the ids of this session's selected tests of
those files), each of them here reporting the child's outcome for it (``replay``), so that the two cores of
CI both run tests.

A child runs as the session does (the same interpreter and its options, ``-m pytest`` or the console script,
the working directory) with the session's pytest options that change outcomes (``configure``), and it
never outlives the session: a session that stops early (``-x``, Ctrl-C) kills and reaps it (``stop``, from
``tests/conftest.py``), and on Linux the kernel kills it if the session's process dies (``die_with_parent``,
which the child's ``tests/conftest.py`` calls), even by ``kill -9``.
"""

import ctypes
import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence

import pytest

ROOT = pathlib.Path(__file__).parents[1]
TIMEOUT_S = 900
_PARENT = "XENT_JAX_BACKGROUND_PARENT"
_REPORT = "XENT_JAX_BACKGROUND_REPORT"  # in a ``ChildSession``'s child: where it writes each test's outcome
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# The options of this session that a child shares (``configure``).
_OPTIONS: list[str] = []


class ChildFailure(Exception):
  """A test failed in the child session, or did not run there."""


def configure(config: pytest.Config) -> None:
  """Keeps what a child must share with this session: its -W filters, -o overrides, -p plugins (the child
  always runs without the cache), config file, rootdir, import mode and --runxfail."""
  args = config.known_args_namespace
  options = [arg for f in args.pythonwarnings or [] for arg in ("-W", f)]
  options += [arg for o in config.option.override_ini or [] for arg in ("-o", o)]
  options += [arg for p in args.plugins or [] if "cacheprovider" not in p for arg in ("-p", p)]
  options += ["-c", args.inifilename] if args.inifilename else []
  options += ["--rootdir", args.rootdir] if args.rootdir else []
  options += [f"--import-mode={args.importmode}"] + (["--runxfail"] if config.option.runxfail else [])
  _OPTIONS[:] = options


def _pytest_as_this_session_runs_it() -> list[str]:
  """This interpreter with its -W, -X, -I and -P options, running pytest as this session does: the console
  script (sys.path starts with its folder) or else ``-m pytest`` (it starts with the working directory), so
  that a child imports the xent_jax this session imports."""
  python = [sys.executable, *(f"-W{option}" for option in sys.warnoptions)]
  python += [f"-X{k}" if v is True else f"-X{k}={v}" for k, v in sys._xoptions.items()]
  python += ["-I"] if sys.flags.isolated else ["-P"] if getattr(sys.flags, "safe_path", False) else []
  script = pathlib.Path(sys.argv[0])
  if script.name.startswith(("pytest", "py.test")) and script.is_file():
    return [*python, str(script)]
  return [*python, "-m", "pytest"]


def start(args: Sequence[str], *, env: Mapping[str, str] | None = None) -> subprocess.Popen:
  """Starts pytest on ``args`` (paths or test ids under the repository root, absolute or relative to it) in
  this session's working directory, quiet, with no cache, and this session's options (``configure``; those
  from PYTEST_ADDOPTS are among them, so the child does not read it)."""
  paths = [os.path.join(ROOT, a) for a in args]  # joined as strings: a test id may hold "//" or "/."
  environment = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
  return subprocess.Popen(
    [*_pytest_as_this_session_runs_it(), "-q", "-p", "no:cacheprovider", *_OPTIONS, *paths],
    env={**environment, **(env or {}), _PARENT: str(os.getpid())},
    # The output waits in the pipe until `output` reads it (the child blocks if the pipe fills, never deadlocks).
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def output(process: subprocess.Popen, timeout_s: float = TIMEOUT_S) -> str:
  """Everything the child printed once it has exited; a child still running after ``timeout_s`` is killed and the
  call fails with the end of its output."""
  try:
    text, _ = process.communicate(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    stop(process)
    text, _ = process.communicate()
    raise AssertionError(f"killed after {timeout_s} s: {process.args}\n{text[-12000:]}") from None
  return text


def stop(process: subprocess.Popen) -> None:
  """Kills the child if it still runs and reaps it."""
  if process.poll() is None:
    process.kill()
  process.wait()


def die_with_parent() -> None:
  """In a child started by ``start``, on Linux: asks the kernel to kill this process when the session's dies."""
  parent = os.environ.get(_PARENT)
  if parent is None or not sys.platform.startswith("linux"):
    return
  ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
  if os.getppid() != int(parent):  # the session died before the request was made
    os._exit(1)


def in_child_session() -> bool:
  """Whether this session is a ``ChildSession``'s (which runs the delegated tests itself)."""
  return _REPORT in os.environ


class ChildSession:
  """A child session running the given tests, and the outcome of each once it has finished."""

  def __init__(self, nodeids: Sequence[str]) -> None:
    self.report = pathlib.Path(tempfile.mkdtemp()) / "outcomes.json"
    self.process = start(nodeids, env={_REPORT: str(self.report)})

  @functools.cached_property
  def outcomes(self) -> dict[str, list[str]] | str:
    """Test id -> [outcome, text, seconds] for every test the child ran; or why there are none."""
    try:
      text = output(self.process)
    except AssertionError as timeout:
      return str(timeout)
    if not self.report.exists():
      return f"the child session wrote no report (exit status {self.process.returncode}):\n{text[-12000:]}"
    outcomes: dict[str, list[str]] = json.loads(self.report.read_text())
    return outcomes

  def replay(self, nodeid: str) -> None:
    """Ends as the child's run of ``nodeid`` did: returns where it passed (an XPASS reads as a pass here),
    fails with its text where it failed (a strict XPASS, a setup or teardown error too), skips where it was
    skipped, xfails where it xfailed. ``delegate`` has removed the test's own xfail marks and fixtures here,
    so that nothing here reinterprets what the child reports."""
    outcomes = self.outcomes
    if isinstance(outcomes, str):
      raise ChildFailure(outcomes)
    if nodeid not in outcomes:
      raise ChildFailure(f"{nodeid} did not run in the child session")
    outcome, text, _ = outcomes[nodeid]
    if outcome == "skipped":
      pytest.skip(text)
    if outcome == "xfailed":
      pytest.xfail(text)
    if outcome == "failed":
      raise ChildFailure(f"in the child session:\n{text}")

  def delegate(self, item: pytest.Item) -> None:
    """Makes ``item`` replay its outcome in the child instead of running: no fixtures or setup here (the child
    runs them), and no xfail marks here (the child applies them)."""
    for node in item.listchain():
      node.own_markers = [mark for mark in node.own_markers if mark.name != "xfail"]
    item.setup = item.teardown = lambda: None
    item.runtest = functools.partial(self.replay, item.nodeid)


_OUTCOMES: dict[str, list[str]] = {}


def record(report: pytest.TestReport) -> None:
  """In a ``ChildSession``'s child: keeps a test's outcome (its call, or a setup or teardown that did not pass)."""
  if not in_child_session() or (report.when != "call" and report.passed):
    return
  if _OUTCOMES.get(report.nodeid, [""])[0] == "failed":
    return
  if report.skipped and hasattr(report, "wasxfail"):
    outcome, text = "xfailed", report.wasxfail or "xfailed in the child session"
  else:
    outcome = report.outcome
    text = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longreprtext
  _OUTCOMES[report.nodeid] = [outcome, text, f"{report.duration:.2f}"]


def write_report() -> None:
  """In a ``ChildSession``'s child: writes the outcomes for the session that started it."""
  if in_child_session():
    pathlib.Path(os.environ[_REPORT]).write_text(json.dumps(_OUTCOMES))
