import pytest
import torch

from malaria_pipeline.ml.augment import Augmentation, random_crop, random_symmetries


def _batch(count=64, size=8, dtype=torch.uint8):
    return (torch.arange(count * 3 * size * size) % 251).to(dtype).view(count, 3, size, size)


def test_crop_shifts_each_image_by_at_most_pad_and_fills_with_black():
    images = _batch() + 1  # no zero pixel inside an image
    cropped = random_crop(images, pad=2, generator=torch.Generator().manual_seed(0))
    assert cropped.shape == images.shape and cropped.dtype == torch.uint8
    offsets = set()
    for original, crop in zip(images, cropped):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(torch.nn.functional.pad(original, (2, 2, 2, 2))[:, 2 + dy : 10 + dy, 2 + dx : 10 + dx], crop)]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 10  # each image gets its own offset


def _flips_then_turns(images, generator, flips, rotations):
    """The reference: the same draws applied image by image with ``flip`` and ``rot90``."""
    count = len(images)
    left_right = torch.rand(count, generator=generator) < 0.5 if flips else torch.zeros(count, dtype=torch.bool)
    up_down = torch.rand(count, generator=generator) < 0.5 if flips else torch.zeros(count, dtype=torch.bool)
    turns = torch.randint(0, 4, (count,), generator=generator) if rotations else torch.zeros(count, dtype=torch.long)
    out = []
    for image, lr, ud, k in zip(images, left_right, up_down, turns):
        image = image.flip(2) if lr else image
        image = image.flip(1) if ud else image
        out.append(image.rot90(int(k), dims=(1, 2)))
    return torch.stack(out)


@pytest.mark.parametrize(("flips", "rotations"), [(True, True), (True, False), (False, True), (False, False)])
def test_symmetries_are_the_drawn_flips_and_quarter_turns_of_each_image(flips, rotations):
    images = _batch()
    out = random_symmetries(images, torch.Generator().manual_seed(1), flips, rotations)
    assert torch.equal(out, _flips_then_turns(images, torch.Generator().manual_seed(1), flips, rotations))
    kinds = {next(i for i, s in enumerate(_all_symmetries(x)) if torch.equal(s, y)) for x, y in zip(images, out)}
    assert len(kinds) == {(True, True): 8, (True, False): 4, (False, True): 4, (False, False): 1}[(flips, rotations)]


def _all_symmetries(image):
    return [t for k in range(4) for t in (image.rot90(k, (1, 2)), image.flip(2).rot90(k, (1, 2)))]


def test_augmentation_is_seeded_works_on_uint8_and_can_be_switched_off():
    images = _batch()
    a = Augmentation(pad=4, flips=True, rotations=True)(images, torch.Generator().manual_seed(3))
    b = Augmentation(pad=4, flips=True, rotations=True)(images, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, images) and a.dtype == torch.uint8
    assert torch.equal(Augmentation(pad=0, flips=False, rotations=False)(images, torch.Generator()), images)


# Mutants found by mutmut (docs/mutation-testing.md)


@pytest.mark.parametrize("pad", [1, 2])
def test_crop_offsets_cover_every_shift_from_minus_pad_to_pad(pad):
    images = _batch(count=200) + 1
    cropped = random_crop(images, pad=pad, generator=torch.Generator().manual_seed(0))
    side = images.shape[-1]
    shifts = set()
    for original, crop in zip(images, cropped):
        padded = torch.nn.functional.pad(original, (pad,) * 4)
        shifts |= {(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
                   if torch.equal(padded[:, pad + dy : pad + dy + side, pad + dx : pad + dx + side], crop)}
    assert shifts == {(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)}


def test_symmetries_default_to_flips_and_quarter_turns():
    images = _batch()
    out = random_symmetries(images, torch.Generator().manual_seed(1))
    assert torch.equal(out, _flips_then_turns(images, torch.Generator().manual_seed(1), True, True))


@pytest.mark.parametrize(("flips", "rotations"), [(True, False), (False, True)])
def test_the_augmentation_passes_its_flips_and_rotations_on(flips, rotations):
    images = _batch()
    out = Augmentation(pad=0, flips=flips, rotations=rotations)(images, torch.Generator().manual_seed(2))
    assert torch.equal(out, _flips_then_turns(images, torch.Generator().manual_seed(2), flips, rotations))
