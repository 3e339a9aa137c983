import subprocess
import sys

import pytest
import torch

from malaria_pipeline.ml.model_io import CellClassifier, load_model, model_bundle
from malaria_pipeline.ml.train import train_classifier
from tests.ml.test_train import quick, tiny_data


@pytest.mark.parametrize(("architecture", "network_args"), [("resnet9", {"width": 8}), ("resnet18", {})])
def test_load_model_in_a_fresh_process_predicts_as_the_trained_module(tmp_path, architecture, network_args):
    data = tiny_data()
    result = train_classifier(architecture, network_args, data, quick(epochs=1), torch.device("cpu"), num_classes=2)
    bundle = model_bundle(result.network, architecture=architecture, network_args=network_args,
                          class_names=data.class_names, normalization={"mean": data.mean, "std": data.std},
                          image_size=16)
    torch.save(bundle, tmp_path / "model.pt")
    images = data.valid_images
    torch.save(images, tmp_path / "images.pt")
    trained = CellClassifier(result.network, data.mean, data.std, data.class_names, 16)
    expected = trained.predict_proba(images)

    code = (
        "import sys, torch; from malaria_pipeline.ml import load_model; "
        "model = load_model(sys.argv[1]); "
        "torch.save(model.predict_proba(torch.load(sys.argv[2], weights_only=True)), sys.argv[3]); "
        "print(model.class_names, model.image_size)"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.pt"), str(tmp_path / "images.pt"),
                          str(tmp_path / "probs.pt")], capture_output=True, text=True, check=True)
    assert run.stdout.split("\n")[0] == "['Parasitized', 'Uninfected'] 16"
    assert torch.allclose(torch.load(tmp_path / "probs.pt", weights_only=True), expected, atol=1e-5)


def test_the_bundle_loads_safely_with_weights_only(tmp_path):
    data = tiny_data()
    network = train_classifier("resnet9", {"width": 4}, data, quick(epochs=1), torch.device("cpu"), num_classes=2).network
    bundle = model_bundle(network, architecture="resnet9", network_args={"width": 4}, class_names=data.class_names,
                          normalization={"mean": data.mean, "std": data.std}, image_size=16, extra={"best_epoch": 1})
    torch.save(bundle, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=True)
    assert loaded["architecture"] == "resnet9" and loaded["best_epoch"] == 1
    assert isinstance(load_model(loaded), CellClassifier)


def test_a_file_that_is_not_a_bundle_is_named(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="Not a malaria-pipeline model bundle"):
        load_model(tmp_path / "other.pt")
