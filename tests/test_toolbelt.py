"""The maintainer's toolbelt, run as CI runs it: ruff's lint and format check over the tree and
mypy over the package (their configuration is in pyproject.toml). Each failure shows the tool's output."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]

COMMANDS = {
  "ruff check": ("ruff", "check", "."),
  "ruff format --check": ("ruff", "format", "--check", "."),
  "mypy": ("mypy",),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_clean(name):
  result = subprocess.run(
    [sys.executable, "-m", *COMMANDS[name]], cwd=ROOT, capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, f"`{name}` found problems:\n{result.stdout}{result.stderr}"
