"""The exported graph on ONNX Runtime, without PyTorch: the same probabilities as the network written out
by hand (tests/helpers.py), with and without test-time augmentation; the model description it carries;
and an error that names the file, its model and what to do for a broken or foreign graph, a missing
onnxruntime and an unknown runtime."""

import builtins
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from malaria_pipeline.ml import load_model
from malaria_pipeline.ml.model_io import weights_sha256
from malaria_pipeline.ml.onnx_export import export_onnx
from malaria_pipeline.ml.onnx_runtime import (
    MODEL_KEY,
    OnnxClassifier,
    OnnxModelError,
    check_runtime,
    import_onnxruntime,
)
from tests.helpers import reference_proba, reference_tta_proba, tiny_bundle


@pytest.fixture(scope="module")
def exported():
    bundle = {**tiny_bundle(), "temperature": 1.7, "operating_point": {"threshold": 0.3}}
    return bundle, export_onnx(load_model(bundle), bundle)


def _images(cells: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (cells, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize("tta", [False, True])
def test_the_graph_answers_what_the_network_written_out_answers_with_and_without_tta(exported, tta):
    bundle, graph = exported
    images = _images(37)
    answered = OnnxClassifier(graph, path="model.onnx", run="r").predict_proba(images.numpy(), 16, tta=tta)
    reference = (reference_tta_proba if tta else reference_proba)(bundle, images, temperature=1.7).numpy()
    assert answered.shape == (37, 2) and np.abs(answered - reference).max() < 1e-5
    # with TTA the answers are those of the 8 views, not of the image alone
    if tta:
        assert np.abs(answered - reference_proba(bundle, images, temperature=1.7).numpy()).max() > 1e-3


def test_the_graph_carries_its_bundle_less_the_weights_and_their_digest(exported):
    bundle, graph = exported
    classifier = OnnxClassifier(graph, path="model.onnx", run="r")
    assert classifier.model == {key: value for key, value in bundle.items() if key != "state_dict"}
    assert (classifier.class_names, classifier.image_size) == (["Parasitized", "Uninfected"], 16)
    classifier.check_model(bundle, weights_sha256(bundle))
    other = tiny_bundle()
    other["state_dict"] = {
        name: t + 1 if t.is_floating_point() else t for name, t in other["state_dict"].items()
    }
    with pytest.raises(
        OnnxModelError, match=r"^model.onnx \(the ONNX graph of r\) was exported from other weights"
    ):
        classifier.check_model(bundle, weights_sha256(other))
    with pytest.raises(OnnxModelError, match=r"has temperature 1.7 inside, and the model bundle 1.0"):
        classifier.check_model({**bundle, "temperature": 1.0}, weights_sha256(bundle))


def test_no_cells_no_answers(exported):
    assert OnnxClassifier(exported[1], path="p", run="r").predict_proba(
        np.empty((0, 3, 16, 16), np.uint8)
    ).shape == (0, 2)


def test_a_broken_file_is_named_with_its_model_and_what_to_do(exported):
    with pytest.raises(OnnxModelError) as raised:
        OnnxClassifier(exported[1][:500], path="data/06_models/model.onnx/v1/model.onnx", run="version v1")
    assert str(raised.value).startswith(
        "data/06_models/model.onnx/v1/model.onnx (the ONNX graph of version v1) is not a readable ONNX graph ("
    )
    assert str(raised.value).endswith(
        ": export it again with `kedro run --pipelines training`, or set inference.runtime=torch"
    )


def test_a_graph_not_exported_by_a_training_run_is_refused(exported):
    foreign = onnx.load_from_string(exported[1])
    del foreign.metadata_props[:]
    with pytest.raises(OnnxModelError, match="holds no malaria-pipeline model description"):
        OnnxClassifier(foreign.SerializeToString(), path="x.onnx", run="r")
    smaller = onnx.load_from_string(exported[1])
    description = json.loads(next(p.value for p in smaller.metadata_props if p.key == MODEL_KEY))
    next(p for p in smaller.metadata_props if p.key == MODEL_KEY).value = json.dumps(
        {**description, "image_size": 32}
    )
    with pytest.raises(OnnxModelError, match=r"not uint8 images N×3×32×32 in and 2 probabilities out"):
        OnnxClassifier(smaller.SerializeToString(), path="x.onnx", run="r")


def test_an_unknown_runtime_gives_the_allowed_values():
    assert [check_runtime(r) for r in ("onnx", "torch", "onnx_int8")] == ["onnx", "torch", "onnx_int8"]
    with pytest.raises(
        ValueError, match=r"inference.runtime is 'tensorrt': give onnx .*, torch .* or onnx_int8"
    ):
        check_runtime("tensorrt")


def test_a_missing_onnxruntime_names_the_package_and_the_runtime_to_choose(monkeypatch):
    real_import = builtins.__import__

    def without_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ModuleNotFoundError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_onnxruntime)
    with pytest.raises(
        ImportError,
        match=r"inference.runtime is onnx, but the package onnxruntime is not installed.*set inference.runtime=torch",
    ):
        import_onnxruntime()


def test_the_runtime_and_the_decoder_import_no_torch(exported, tmp_path):
    """What the served model and Spark's workers load on the ONNX path, in a fresh interpreter."""
    path = tmp_path / "model.onnx"
    path.write_bytes(exported[1])
    code = (
        "import sys, numpy as np\n"
        "from malaria_pipeline.ml.onnx_runtime import OnnxClassifier\n"
        "from malaria_pipeline.ml.images import decode_cell_image\n"
        f"c = OnnxClassifier(open({str(path)!r}, 'rb').read(), path='p', run='r')\n"
        "print(c.predict_proba(np.zeros((2, 3, 16, 16), np.uint8), tta=True).shape)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:2] == ["(2, 2)", "[]"]
