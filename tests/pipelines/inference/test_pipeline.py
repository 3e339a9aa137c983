"""`kedro run --pipelines inference` on new images, with the model of a (tiny) training run."""

import numpy as np
import pytest
import torch

from malaria_pipeline.ml import load_model
from malaria_pipeline.ml.images import decode_cell_image
from tests.helpers import ANY_IMAGE, TINY, bomb_png, image_bytes


@pytest.fixture
def trained(kedro_project, cell_folder):
    kedro_project.run("training", ingestion={"source": str(cell_folder), "image_size": 16}, **TINY)
    return kedro_project


def test_inference_classifies_every_image_and_lists_the_broken_one(trained, tmp_path):
    new = tmp_path / "new_cells"
    (new / "slide_2").mkdir(parents=True)
    for i in range(100):  # any size, grayscale or RGB, PNG or JPEG, in sub-folders
        mode, fmt = ("L", "PNG") if i % 3 == 0 else ("RGB", "JPEG" if i % 3 == 1 else "PNG")
        folder = new / "slide_2" if i % 2 else new
        (folder / f"cell_{i}.{'jpg' if fmt == 'JPEG' else 'png'}").write_bytes(
            image_bytes(30 + i % 40, 25 + i % 30, mode, fmt=fmt, seed=i)
        )
    (new / "cell_broken.png").write_bytes(image_bytes(30, 30)[:90])
    (new / "slide_2" / "cell_bomb.png").write_bytes(bomb_png())

    trained.run("inference", inference={"source": str(new)})
    predictions = trained.load("predictions")
    summary = trained.load("inference_summary")
    assert len(predictions) == 100 and "cell_broken.png" not in set(predictions["file"])
    assert set(predictions["label"]) <= {"Parasitized", "Uninfected"}
    assert summary["images"] == 100 and sum(summary["per_class"].values()) == 100
    assert [entry["path"] for entry in summary["skipped"]] == ["cell_broken.png", "slide_2/cell_bomb.png"]
    assert summary["skipped"][0]["reason"].startswith("truncated or corrupt image")
    assert summary["skipped"][1]["reason"].startswith(
        "image of 20000 × 20000 pixels (400,000,000 pixels) is larger than inference.image_limits.max_pixels"
    )

    # exactly the training preprocessing: decode, fit to the model's size, normalize inside the model
    model = load_model(trained.load("model"))
    files = predictions["file"].tolist()[:10]
    images = torch.from_numpy(
        np.stack([decode_cell_image((new / f).read_bytes(), model.image_size, ANY_IMAGE)[0] for f in files])
    )
    expected = model.predict_proba(images)[:, model.class_names.index("Parasitized")].numpy()
    # The pipeline ran on `device: auto`: a GPU's TF32 convolutions differ from the CPU's in the 4th digit.
    from malaria_pipeline.ml.device import pick_device

    atol = 1e-6 if pick_device("auto").type == "cpu" else 2e-3
    assert np.allclose(predictions["p_parasitized"].to_numpy()[:10], expected, atol=atol)
    assert ((predictions["p_parasitized"] >= 0.5) == (predictions["label"] == "Parasitized")).all()


def test_a_missing_inference_source_names_the_parameter(trained, tmp_path):
    with pytest.raises(Exception, match=r"does not exist\. Set inference\.source"):
        trained.run("inference", inference={"source": str(tmp_path / "nowhere")})
