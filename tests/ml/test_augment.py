import torch

from malaria_pipeline.ml.augment import augment_batch, random_crop, random_flips_and_rotations


def _batch(count=64, size=8):
    return torch.arange(count * 3 * size * size, dtype=torch.float32).view(count, 3, size, size)


def test_crop_shifts_each_image_by_at_most_pad_and_fills_with_black():
    images = _batch() + 1  # no zero pixel inside an image
    cropped = random_crop(images, pad=2, generator=torch.Generator().manual_seed(0))
    assert cropped.shape == images.shape
    offsets = set()
    for original, crop in zip(images, cropped):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(torch.nn.functional.pad(original, (2, 2, 2, 2))[:, 2 + dy : 10 + dy, 2 + dx : 10 + dx], crop)]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 10  # each image gets its own offset


def test_flips_and_rotations_are_symmetries_of_each_image():
    images = _batch()
    out = random_flips_and_rotations(images, torch.Generator().manual_seed(1))
    symmetries = lambda x: [t for k in range(4) for t in (x.rot90(k, (1, 2)), x.flip(2).rot90(k, (1, 2)))]  # noqa: E731
    kinds = set()
    for original, result in zip(images, out):
        matches = [i for i, s in enumerate(symmetries(original)) if torch.equal(s, result)]
        assert matches
        kinds.add(matches[0])
    assert len(kinds) >= 6  # most of the 8 symmetries of the square occur in 64 images


def test_augmentation_is_seeded_and_can_be_switched_off():
    images = _batch()
    a = augment_batch(images, torch.Generator().manual_seed(3))
    b = augment_batch(images, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, images)
    assert torch.equal(augment_batch(images, torch.Generator(), pad=0, flips=False, rotations=False), images)
