"""The hardware profile: which configuration `kedro run` trains, chosen by the CUDA check unless set."""

from __future__ import annotations

import pytest

from malaria_pipeline.framework import profiles

# The values of each profile, as conf/README.md and conf/base/parameters.yml state them.
GPU = {"image_size": 64, "width": 64, "epochs": 10}
CPU = {"image_size": 50, "width": 16, "epochs": 12}


@pytest.fixture(params=[True, False], ids=["cuda", "no-cuda"])
def cuda(request, monkeypatch) -> bool:
    monkeypatch.setattr(profiles, "_cuda_available", lambda: request.param)
    return request.param


def resolved(params: dict) -> dict:
    return {
        "image_size": params["ingestion"]["image_size"],
        "width": params["training"]["width"],
        "epochs": params["training"]["epochs"],
    }


def test_auto_picks_gpu_with_cuda_and_cpu_without(kedro_project, cuda):
    params = kedro_project.context().params
    assert params["profile"] == "auto"
    assert resolved(params) == (GPU if cuda else CPU)
    assert profiles.choose_profile("auto") == (
        ("gpu", "A CUDA device is available") if cuda else ("cpu", "No CUDA device")
    )


@pytest.mark.parametrize("chosen", ["gpu", "cpu"])
def test_a_profile_given_as_a_parameter_wins_over_the_hardware(kedro_project, cuda, chosen):
    params = kedro_project.context(profile=chosen).params
    assert resolved(params) == (GPU if chosen == "gpu" else CPU)


def test_a_profile_in_conf_local_wins_and_a_parameter_wins_over_the_profile(kedro_project, cuda):
    (kedro_project.root / "conf/local/globals.yml").write_text("profile: cpu\n")
    assert resolved(kedro_project.context().params) == CPU
    assert resolved(kedro_project.context(training={"epochs": 3}).params) == {**CPU, "epochs": 3}


def test_conf_local_keeps_working_with_the_cpu_profile(kedro_project, cell_folder, monkeypatch):
    monkeypatch.setattr(profiles, "_cuda_available", lambda: False)
    (kedro_project.root / "conf/local/globals.yml").write_text(f"ingestion_source: {cell_folder}\n")
    loaded = kedro_project.context()
    assert resolved(loaded.params) == CPU
    assert loaded.params["ingestion"]["source"] == str(cell_folder)
    assert loaded.catalog.load("cell_images").source == str(cell_folder.resolve())


def test_an_unknown_profile_is_an_error_that_names_the_choices(kedro_project):
    with pytest.raises(
        Exception,
        match=r"profile is 'laptop': use auto \(gpu where CUDA is available, else cpu\), gpu or cpu",
    ):
        kedro_project.context(profile="laptop").params
