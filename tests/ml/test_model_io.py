import subprocess
import sys

import pytest
import torch

from malaria_pipeline.ml.model_io import CellClassifier, load_model, model_bundle
from malaria_pipeline.ml.train import train_classifier
from tests.helpers import reference_proba, tiny_bundle, tiny_data, train_config


@pytest.mark.parametrize(("architecture", "width"), [("resnet9", 8), ("resnet18", 4)])
def test_load_model_in_a_fresh_process_predicts_as_the_trained_module(tmp_path, architecture, width):
    data = tiny_data()
    config = train_config(architecture=architecture, width=width, epochs=1)
    trained = train_classifier(data, config).classifier
    bundle = model_bundle(trained, architecture=architecture, network_args=config.network_args)
    torch.save(bundle, tmp_path / "model.pt")
    images = data.valid_images
    torch.save(images, tmp_path / "images.pt")
    # The reference: the trained network on images normalized by hand, outside the classifier.
    pixels = (images.float() / 255 - torch.tensor(data.mean).view(1, 3, 1, 1)) / torch.tensor(data.std).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        expected = trained.network.eval()(pixels).softmax(dim=1)

    code = (
        "import sys, torch; from malaria_pipeline.ml import load_model; "
        "model = load_model(sys.argv[1]); "
        "torch.save(model.predict_proba(torch.load(sys.argv[2], weights_only=True)), sys.argv[3]); "
        "print(model.class_names, model.image_size)"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(tmp_path / "model.pt"),
            str(tmp_path / "images.pt"),
            str(tmp_path / "probs.pt"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.split("\n")[0] == "['Parasitized', 'Uninfected'] 16"
    assert torch.allclose(torch.load(tmp_path / "probs.pt", weights_only=True), expected, atol=1e-5)


def test_the_bundle_loads_safely_with_weights_only(tmp_path):
    data = tiny_data()
    config = train_config(epochs=1)
    classifier = train_classifier(data, config).classifier
    bundle = model_bundle(
        classifier, architecture="resnet9", network_args=config.network_args, extra={"best_epoch": 1}
    )
    torch.save(bundle, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=True)
    assert loaded["architecture"] == "resnet9" and loaded["best_epoch"] == 1
    assert isinstance(load_model(loaded), CellClassifier)


def test_a_file_that_is_not_a_bundle_is_named(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="Not a malaria-pipeline model bundle"):
        load_model(tmp_path / "other.pt")


def test_the_loaded_model_predicts_as_the_training_preprocessing_written_out():
    # (pixels / 255 - mean) / std into the network, in float64 here; statistics unlike the defaults
    data = tiny_data()
    bundle = tiny_bundle()
    bundle["mean"], bundle["std"] = [0.62, 0.55, 0.7], [0.18, 0.22, 0.15]
    images = torch.cat([data.train_images, data.valid_images])
    expected = reference_proba(bundle, images)
    probabilities = load_model(bundle).predict_proba(images, batch_size=7)
    assert probabilities.dtype == torch.float32 and probabilities.shape == (len(images), 2)
    assert torch.allclose(probabilities.double(), expected, atol=1e-5, rtol=0)
    assert expected[:, 0].max() - expected[:, 0].min() > 1e-3  # the images get different answers


# Mutants found by mutmut (docs/mutation-testing.md)


@pytest.mark.parametrize(("architecture", "image_size"), [("resnet9", 16), ("resnet18", 128)])
def test_a_saved_bundle_loads_in_this_process_as_the_classifier_it_was(tmp_path, architecture, image_size):
    from malaria_pipeline.ml.models import build_network

    torch.manual_seed(0)
    network = build_network(architecture, num_classes=3, image_size=image_size, width=4).eval()
    names = ["Parasitized", "Uninfected", "Other"]
    classifier = CellClassifier(
        network=network, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], class_names=names, image_size=image_size
    )
    bundle = model_bundle(classifier, architecture=architecture, network_args={"width": 4})
    assert bundle["torch_version"] == torch.__version__
    torch.save(bundle, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.class_names == names and loaded.image_size == image_size
    assert loaded.channels_last is True and loaded.bf16 is False and not loaded.training
    if architecture == "resnet18":
        assert loaded.network.conv1.stride == (2, 2)  # 128 pixels: torchvision's own stem
    images = torch.randint(0, 256, (2, 3, image_size, image_size), dtype=torch.uint8)
    mean, std = (
        torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1),
        torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        expected = network((images.float() / 255 - mean) / std).softmax(dim=1)
    assert torch.allclose(loaded.predict_proba(images), expected, atol=1e-5)


def test_a_bundle_of_another_format_or_a_pickled_object_is_refused(tmp_path):
    torch.save({"format": 2}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match=r"^Not a malaria-pipeline model bundle \(format 2\): "):
        load_model(tmp_path / "future.pt")
    torch.save({"format": 1, "payload": _Unsafe()}, tmp_path / "pickled.pt")
    import pickle

    with pytest.raises(pickle.UnpicklingError):
        load_model(tmp_path / "pickled.pt")


class _Unsafe:
    """Any class but the tensors and containers that ``weights_only`` allows."""


def test_a_pickled_object_is_refused_even_where_the_environment_turns_weights_only_off(tmp_path, monkeypatch):
    # torch.load's default becomes weights_only=False under this variable; load_model asks for True itself.
    import pickle

    torch.save({"format": 1, "payload": _Unsafe()}, tmp_path / "pickled.pt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(pickle.UnpicklingError):
        load_model(tmp_path / "pickled.pt")


def test_a_bundle_without_temperature_loads_with_t_1_and_one_with_it_applies_it(tmp_path):
    # a bundle saved before temperature scaling existed: no key "temperature", no "operating_point"
    old = {k: v for k, v in tiny_bundle().items() if k != "temperature"}
    images = tiny_data().valid_images
    assert load_model(old).temperature == 1.0
    assert torch.allclose(
        load_model(old).predict_proba(images).double(), reference_proba(old, images), atol=1e-5
    )
    point = {
        "threshold": 0.3,
        "positive_class": "Parasitized",
        "tta": False,
        "target_sensitivity": 0.97,
        "sensitivity": 0.98,
        "specificity": 0.9,
    }
    torch.save({**old, "temperature": 2.0, "operating_point": point}, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=True)
    assert loaded["operating_point"] == point
    assert torch.allclose(
        load_model(loaded).predict_proba(images).double(), reference_proba(old, images, 2.0), atol=1e-5
    )
    # and the classifier's temperature is what the next bundle keeps
    classifier = load_model(loaded)
    assert model_bundle(classifier, architecture="resnet9", network_args={"width": 4})["temperature"] == 2.0
