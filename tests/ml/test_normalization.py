import pytest
import torch

from malaria_pipeline.ml import normalization
from malaria_pipeline.ml.normalization import channel_mean_std


def test_matches_mean_and_std_computed_directly(monkeypatch):
    monkeypatch.setattr(normalization, "BATCH_IMAGES", 7)  # several batches, the last one partial
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 9, 9), dtype=torch.uint8, generator=generator)
    images[:, 0] //= 4  # channels of different brightness
    rows = torch.arange(3, 41)
    mean, std = channel_mean_std(images, rows)
    direct = images[rows].double() / 255
    assert mean == pytest.approx(direct.mean(dim=(0, 2, 3)).tolist(), abs=1e-10)
    assert std == pytest.approx(direct.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-10)
    assert mean[0] < mean[1]


def test_empty_subset_is_an_error():
    with pytest.raises(ValueError, match="subset is empty"):
        channel_mean_std(torch.zeros((2, 3, 4, 4), dtype=torch.uint8), torch.tensor([], dtype=torch.long))


# Mutants found by mutmut (docs/mutation-testing.md)


def test_all_images_by_default_and_images_taller_than_wide():
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (5, 3, 4, 7), dtype=torch.uint8, generator=generator)
    mean, std = channel_mean_std(images)
    direct = images.double() / 255
    assert mean == pytest.approx(direct.mean(dim=(0, 2, 3)).tolist(), abs=1e-10)
    assert std == pytest.approx(direct.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-10)


def test_an_empty_subset_is_named_in_full():
    with pytest.raises(ValueError) as error:
        channel_mean_std(torch.zeros((2, 3, 4, 4), dtype=torch.uint8), torch.tensor([], dtype=torch.long))
    assert str(error.value) == "No images to compute normalization statistics on: the subset is empty"
