"""Every notebook runs top to bottom in a fresh kernel (the `notebooks` extra installs what they need).

The notebooks execute once per test session, two kernels at a time, on a thread started when collection
finishes (`start_in_background`); these tests check the results, and `tests/test_docs.py` renders the same
executed notebooks instead of running them again.
"""

import asyncio
import concurrent.futures
import functools
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
TIMEOUT_S = 240  # per cell
BACKGROUND_FOR = ("test_notebook_runs",)


@functools.cache
def start_in_background() -> concurrent.futures.Future:
  """Starts executing the notebooks on a thread of their own (called from tests/conftest.py when the session's
  collection finishes, so that the kernels run beside the in-process tests)."""
  return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="notebooks").submit(_execute_all)


def executed() -> dict[pathlib.Path, nbformat.NotebookNode | Exception]:
  """Every notebook executed (or the exception that stopped it), two at a time; computed once per session."""
  return start_in_background().result()


def _execute_all() -> dict[pathlib.Path, nbformat.NotebookNode | Exception]:
  """Executes every notebook in a fresh kernel, two kernels at a time."""

  async def execute(path: pathlib.Path, slots: asyncio.Semaphore):
    notebook = nbformat.read(path, as_version=4)
    async with slots:
      client = NotebookClient(
        notebook, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
      )
      await client.async_execute()
    return notebook

  # Started in this order (the semaphore's waiters queue first come, first served): the later notebooks run
  # longest (05, 06 and 07 about 25-35 s each on 2 cores, the first four 10-20 s), and started first they do not
  # finish alone at the end.
  order = NOTEBOOKS[::-1]

  async def execute_all():
    slots = asyncio.Semaphore(2)  # CI has two cores; a kernel spends much of its time compiling on one
    return await asyncio.gather(*(execute(p, slots) for p in order), return_exceptions=True)

  return dict(zip(order, asyncio.run(execute_all()), strict=True))


def test_there_are_seven_notebooks():
  assert len(NOTEBOOKS) >= 7, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
  committed = nbformat.read(path, as_version=4)
  assert all(not cell.get("outputs") for cell in committed.cells if cell.cell_type == "code"), (
    "commit notebooks without outputs"
  )
  notebook = executed()[path]
  if isinstance(notebook, Exception):
    raise notebook
  images = sum("image/png" in out.get("data", {}) for cell in notebook.cells for out in cell.get("outputs", []))
  assert images >= 2, f"{path.name} made {images} plots"
