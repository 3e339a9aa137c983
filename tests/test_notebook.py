"""notebooks/exploration.ipynb runs top to bottom on a small generated data set."""

import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import PROJECT_ROOT


@pytest.mark.slow
def test_exploration_notebook_runs_on_the_catalog_of_a_small_run(kedro_project, cell_folder):
    kedro_project.run(
        "training",
        ingestion={"source": str(cell_folder), "image_size": 16},
        preprocessing={
            "split": {"strategy": "stratified", "fractions": {"train": 0.5, "validation": 0.25, "test": 0.25}}
        },
        training={"width": 4, "epochs": 2, "batch_size": 8},
    )
    notebooks = kedro_project.root / "notebooks"
    notebooks.mkdir()
    shutil.copy(PROJECT_ROOT / "notebooks" / "exploration.ipynb", notebooks)
    notebook = nbformat.read(notebooks / "exploration.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(notebooks)}}
    ).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "42 images of 6 patients" in text and "parasitized cells" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 6  # the cell grids and the figures
