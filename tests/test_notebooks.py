"""The notebooks run end to end (nbclient, a fresh python3 kernel) and show their figures inline."""
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the science tier: pytest -m slow

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
# notebook -> how many inline PNG figures it must display at least
EXPECTED_FIGURES = {"quickstart.ipynb": 3, "sparse_regression.ipynb": 1, "matrix_factorization.ipynb": 1,
                    "your_model.ipynb": 3}


def execute(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


@pytest.fixture(autouse=True)
def kernel_imports_this_checkout(monkeypatch):
    """The kernel is a subprocess started in notebooks/: it must import the package from this checkout."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def test_every_notebook_is_covered():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED_FIGURES)


@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_notebook_runs_and_shows_its_figures(name):
    nb = execute(name)  # raises CellExecutionError, naming the cell, on any error
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "a code cell did not run"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0]
    pngs = [o for c in code for o in c.outputs if o.output_type in ("display_data", "execute_result")
            and "image/png" in o.get("data", {})]
    assert len(pngs) >= EXPECTED_FIGURES[name], f"{name}: {len(pngs)} inline figures, expected {EXPECTED_FIGURES[name]}"
