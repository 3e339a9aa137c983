"""The two input pipelines of the benchmark: the baseline draws the same augmentations as ours."""

import numpy as np
import torch
from PIL import Image

from malaria_pipeline.ml.models import CellClassifier, build_network
from malaria_pipeline.ml.throughput import baseline_loader, measure_baseline, measure_ours
from tests.helpers import train_config


def write_folder(folder, size=20):
    for label in ("Parasitized", "Uninfected"):
        (folder / label).mkdir(parents=True)
        for i in range(4):
            pixels = np.zeros((size, size, 3), np.uint8)
            pixels[2:5, 12:18] = 255  # an asymmetric mark, to tell the turns apart
            Image.fromarray(pixels).save(folder / label / f"{i}.png")


def test_the_baseline_turns_and_flips_images_exactly_as_ours_may(tmp_path):
    write_folder(tmp_path)
    config = train_config(batch_size=8, pad=0, flips=True, rotations=True)
    images, _ = next(iter(baseline_loader(tmp_path, 20, [0.0] * 3, [1.0] * 3, config, workers=0)))
    mark = torch.zeros(3, 20, 20)
    mark[:, 2:5, 12:18] = 1
    symmetries = [m.rot90(k, dims=(1, 2)) for k in range(4) for m in (mark, mark.flip(2))]
    assert all(any(torch.equal(image, s) for s in symmetries) for image in images)


def test_both_pipelines_train_the_network_and_report_images_per_second(tmp_path):
    write_folder(tmp_path)
    config = train_config(batch_size=4)
    images = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8)
    labels = torch.tensor([0, 1] * 4)
    for measure in ("ours", "baseline"):
        network = build_network("resnet9", image_size=20, width=4)
        classifier = CellClassifier(
            network=network,
            mean=[0.5] * 3,
            std=[0.25] * 3,
            class_names=["Parasitized", "Uninfected"],
            image_size=20,
        )
        before = [p.detach().clone() for p in network.parameters()]
        if measure == "ours":
            result = measure_ours(classifier, images, labels, config, torch.device("cpu"), 3, 1)
        else:
            loader = baseline_loader(tmp_path, 20, [0.5] * 3, [0.25] * 3, config, workers=0)
            result = measure_baseline(classifier, loader, config, torch.device("cpu"), 3, 1)
        assert result.images_per_second > 0 and result.steps == 3 and result.batch_size == 4
        assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters())), measure


def test_the_baseline_normalizes_per_image_as_the_notebooks_do_and_skips_the_classifiers_normalization(
    tmp_path,
):
    from malaria_pipeline.ml import throughput

    write_folder(tmp_path)
    config = train_config(batch_size=8, pad=0, flips=False, rotations=False)
    images, _ = next(
        iter(baseline_loader(tmp_path, 20, [0.5, 0.4, 0.3], [0.25, 0.2, 0.1], config, workers=0))
    )
    pixels = torch.zeros(3, 20, 20)
    pixels[:, 2:5, 12:18] = 1
    expected = (pixels - torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)) / torch.tensor([0.25, 0.2, 0.1]).view(
        3, 1, 1
    )
    assert all(torch.allclose(image, expected) for image in images)
    network = build_network("resnet9", image_size=20, width=4).eval()
    classifier = CellClassifier(
        network=network,
        mean=[0.5, 0.4, 0.3],
        std=[0.25, 0.2, 0.1],
        class_names=["Parasitized", "Uninfected"],
        image_size=20,
    )
    with torch.no_grad():
        assert torch.equal(throughput._NormalizedInputs(classifier)(images), network(images))
