"""Grad-CAM heatmaps: the size of the image, finite, on the evidence, and Grad-CAM's definition written out."""

from __future__ import annotations

import pytest
import torch

from malaria_pipeline.ml.explain import grad_cam, last_block
from malaria_pipeline.ml.models import CellClassifier, build_network
from malaria_pipeline.ml.train import TrainData, fit
from tests.helpers import reference_grad_cam, train_config

SIZE = 32
CLASSES = ["Parasitized", "Uninfected"]


def dotted_cells(count: int, seed: int):
    """Grey noise; every even cell (Parasitized, class 0) has a dark 4×4 dot at a random place.
    Returns the images, the labels and each dot's centre (row, column) in pixel coordinates."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(120, 200, (count, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % 2
    corners = torch.randint(2, SIZE - 6, (count, 2), generator=generator)
    for i in range(0, count, 2):
        y, x = corners[i].tolist()
        images[i, :, y : y + 4, x : x + 4] = 20
    return images, labels, corners.double() + 1.5


@pytest.fixture(scope="module")
def dot_finder():
    """A ResNet-9 of width 8 trained to tell dotted cells from clean ones (about 2 s)."""
    images, labels, _ = dotted_cells(384, seed=0)
    valid, valid_labels, _ = dotted_cells(64, seed=1)
    torch.manual_seed(0)
    classifier = CellClassifier(
        network=build_network("resnet9", width=8),
        mean=[0.6] * 3,
        std=[0.2] * 3,
        class_names=CLASSES,
        image_size=SIZE,
    )
    data = TrainData(
        train_images=images,
        train_labels=labels,
        valid_images=valid,
        valid_labels=valid_labels,
        mean=[0.6] * 3,
        std=[0.2] * 3,
        class_names=CLASSES,
    )
    result = fit(classifier, data, train_config(width=8, epochs=6, batch_size=32, pad=0, max_lr=0.02))
    assert result.history[-1]["accuracy"] == 1.0
    return result.classifier.eval()


def test_the_heatmap_of_parasitized_lies_on_the_dot_in_most_cells(dot_finder):
    images, labels, centres = dotted_cells(80, seed=2)
    dotted = labels == 0
    heatmaps = grad_cam(dot_finder, images[dotted], target=0)
    assert heatmaps.shape == (int(dotted.sum()), SIZE, SIZE) and heatmaps.dtype == torch.float32
    assert torch.isfinite(heatmaps).all() and heatmaps.min() >= 0 and heatmaps.amax(dim=(1, 2)).eq(1).all()
    peak = heatmaps.flatten(1).argmax(dim=1)
    distance = torch.hypot(peak // SIZE - centres[dotted, 0], peak % SIZE - centres[dotted, 1])
    # Last block of ResNet-9 on 32 pixels: 4×4 cells of 8 pixels. A peak at random would lie within
    # 6 pixels of the dot in about 11% of cells (π·6² / 32²).
    assert (distance <= 6).double().mean() >= 0.75, distance


def test_the_targets_may_differ_per_cell(dot_finder):
    images, _, _ = dotted_cells(6, seed=3)
    targets = torch.tensor([0, 1, 1, 0, 1, 0])
    each = torch.stack(
        [grad_cam(dot_finder, images[i : i + 1], target=int(t))[0] for i, t in enumerate(targets)]
    )
    assert torch.allclose(grad_cam(dot_finder, images, targets, batch_size=4), each, atol=1e-5)


@pytest.mark.parametrize("architecture", ["resnet9", "resnet18"])
def test_the_heatmap_is_grad_cam_of_the_last_convolutional_block(architecture):
    torch.manual_seed(0)
    network = build_network(architecture, image_size=SIZE, width=8)
    classifier = (
        CellClassifier(network=network, mean=[0.6] * 3, std=[0.2] * 3, class_names=CLASSES, image_size=SIZE)
        .set_speed(channels_last=True, bf16=True)
        .eval()
    )
    images, _, _ = dotted_cells(5, seed=4)
    layer = network.layer3 if architecture == "resnet9" else network.layer4
    assert last_block(network) is layer
    classifier.bf16 = False
    expected = reference_grad_cam(classifier, layer, images, target=1)
    classifier.bf16 = True  # explaining turns bf16 off for itself, and back on
    assert torch.allclose(grad_cam(classifier, images, target=1), expected, atol=1e-5)
    assert classifier.bf16


def test_no_images_and_an_unknown_network():
    classifier = CellClassifier(
        network=build_network("resnet9", width=4),
        mean=[0.5] * 3,
        std=[0.2] * 3,
        class_names=CLASSES,
        image_size=16,
    ).eval()
    assert grad_cam(classifier, torch.zeros((0, 3, 16, 16), dtype=torch.uint8), target=0).shape == (0, 16, 16)
    with pytest.raises(ValueError, match="No Grad-CAM layer is known for Linear"):
        last_block(torch.nn.Linear(2, 2))
