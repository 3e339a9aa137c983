"""The registered pipelines run by Kedro's runner over the project's own catalog.yml, in tmp_path."""

from pathlib import Path

import numpy as np
import pytest
import torch
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog
from kedro.runner import SequentialRunner

from malaria_pipeline.pipeline_registry import register_pipelines
from tests.helpers import PROJECT_ROOT, zip_folder
from tests.pipelines.ingestion.test_nodes import add_bad_files


def project_catalog(tmp_path: Path, source: Path) -> DataCatalog:
    config = OmegaConfigLoader(
        conf_source=str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="local",
        runtime_params={"ingestion": {"source": str(source)}},
    )
    entries = config["catalog"]
    for entry in entries.values():
        if "filepath" in entry:
            entry["filepath"] = str(tmp_path / entry["filepath"])
    catalog = DataCatalog.from_config(entries)
    parameters = config["parameters"]
    parameters["ingestion"]["image_size"] = 16
    parameters["preprocessing"]["split"].update(folds=4, fractions={"train": 0.5, "validation": 0.25, "test": 0.25})
    catalog["params:ingestion"] = parameters["ingestion"]
    catalog["params:preprocessing.split"] = parameters["preprocessing"]["split"]
    return catalog


def test_registry_names_the_pipelines_and_training_is_the_default():
    pipelines = register_pipelines()
    assert {"ingestion", "preprocessing", "training", "__default__"} <= pipelines.keys()
    assert pipelines["__default__"] is pipelines["training"]
    assert set(pipelines["training"].nodes) == set(pipelines["ingestion"].nodes) | set(pipelines["preprocessing"].nodes)


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_training_pipeline_runs_on_real_pngs_some_broken(cell_folder, tmp_path, as_zip):
    broken = add_bad_files(cell_folder)
    source = zip_folder(cell_folder, tmp_path / "cells.zip") if as_zip else cell_folder
    catalog = project_catalog(tmp_path / "out", source)
    SequentialRunner().run(register_pipelines()["training"], catalog)

    index, tensors = catalog.load("image_index"), catalog.load("image_tensors")
    report, split, stats = catalog.load("ingestion_report"), catalog.load("data_split"), catalog.load("normalization_stats")
    assert len(index) == len(tensors) == 42 and tensors.shape[1:] == (3, 16, 16)
    assert {entry["path"] for entry in report["skipped"]} == broken.keys()
    assert split["path"].tolist() == index["path"].tolist()
    assert index.assign(subset=split["subset"]).groupby("patient_id")["subset"].nunique().max() == 1
    train = torch.from_numpy(np.flatnonzero(split["subset"].to_numpy() == "train"))
    direct = tensors[train].double() / 255
    assert stats["mean"] == pytest.approx(direct.mean(dim=(0, 2, 3)).tolist(), abs=1e-4)
    assert stats["std"] == pytest.approx(direct.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-4)
