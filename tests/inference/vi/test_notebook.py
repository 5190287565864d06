"""The variational notebook runs top to bottom (small settings) and says what it should."""

import pathlib

import nbformat
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).parents[3] / "notebooks" / "04_variational.ipynb"


def test_variational_notebook_executes():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    khat = float(text.split("k-hat ")[1].split()[0])
    assert khat < 0.7
    flow_mean = text.split("flow VI: ")[1]
    assert "[ 1." in flow_mean or "[1." in flow_mean
