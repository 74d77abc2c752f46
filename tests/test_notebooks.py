"""Every notebook runs top to bottom in a fresh kernel (the `notebooks` extra installs what they need)."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_six_notebooks():
  assert len(NOTEBOOKS) >= 6, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
  notebook = nbformat.read(path, as_version=4)
  assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit notebooks without outputs"
  NotebookClient(notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
  images = sum("image/png" in out.get("data", {}) for cell in notebook.cells for out in cell.get("outputs", []))
  assert images >= 2, f"{path.name} made {images} plots"
