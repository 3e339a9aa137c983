"""`kedro run --pipelines lr_finder` on the latest preprocessed data, in a KedroProject in tmp_path."""

import pytest


def test_lr_finder_runs_on_the_latest_preprocessed_data(kedro_project, cell_folder):
    kedro_project.run("ingestion", ingestion={"source": str(cell_folder), "image_size": 16})
    kedro_project.run(
        "preprocessing",
        preprocessing={"split": {"folds": 4, "fractions": {"train": 0.5, "validation": 0.25, "test": 0.25}}},
    )
    kedro_project.run(
        "lr_finder", lr_finder={"num_batches": 10}, training={"width": 4, "batch_size": 8, "pad": 2}
    )
    result = kedro_project.load("lr_finder_result")
    assert len(result["lrs"]) == len(result["losses"]) and result["lrs"][0] == pytest.approx(1e-6)
    assert result["lrs"][0] <= result["suggested_max_lr"] <= result["lrs"][-1]
    assert (
        next((kedro_project.root / "data" / "08_reporting" / "lr_finder.png").iterdir()).stat().st_size > 1000
    )
