"""The trained classifier as one ONNX graph: ONNX Runtime answers what the network answers (written out in
float64 in tests/helpers.py), for any number of cells, with the temperature inside; a graph of another model
is refused by its check, naming the gap."""

import numpy as np
import pytest
import torch

from malaria_pipeline.ml import load_model
from malaria_pipeline.ml.onnx_export import OnnxMismatchError, check_onnx, export_onnx
from malaria_pipeline.ml.onnx_runtime import OnnxClassifier
from tests.helpers import reference_proba, tiny_bundle


@pytest.fixture(scope="module")
def calibrated():
    bundle = {**tiny_bundle(), "temperature": 0.8}
    return bundle, load_model(bundle), export_onnx(load_model(bundle), bundle)


@pytest.mark.parametrize("cells", [1, 5, 300])
def test_the_graph_answers_the_calibrated_probabilities_for_any_number_of_cells(calibrated, cells):
    bundle, _, graph = calibrated
    images = torch.randint(
        0, 256, (cells, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(cells)
    )
    answered = OnnxClassifier(graph, path="memory", run="test").predict_proba(images.numpy(), batch_size=128)
    expected = reference_proba(bundle, images, temperature=0.8).numpy()
    assert answered.shape == (cells, 2) and answered.dtype == np.float32
    assert np.abs(answered - expected).max() < 1e-5


def test_the_check_passes_the_models_own_graph_and_refuses_another_naming_the_gap(calibrated):
    _, classifier, graph = calibrated
    images = torch.randint(
        0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    report = check_onnx(graph, classifier, images, tolerance=1e-4)
    assert report["cells"] == 64 and report["max_abs_difference"] < 1e-5 and report["same_labels"]
    assert classifier.channels_last  # the export put the classifier's speed switches back

    torch.manual_seed(1)
    hotter = {**tiny_bundle(), "temperature": 2.0}  # the same weights, another T
    other = export_onnx(load_model(hotter), hotter)
    with pytest.raises(
        OnnxMismatchError, match=r"differ from PyTorch's by up to \d\.\d+e?-?\d* on 64 cells, more than"
    ):
        check_onnx(other, classifier, images, tolerance=1e-4)
