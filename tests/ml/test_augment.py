import math

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
        found = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(
                torch.nn.functional.pad(original, (2, 2, 2, 2))[:, 2 + dy : 10 + dy, 2 + dx : 10 + dx], crop
            )
        ]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 10  # each image gets its own offset


def _flips_then_turns(images, generator, flips, rotations):
    """The reference: the same draws applied image by image with ``flip`` and ``rot90``."""
    count = len(images)
    left_right = (
        torch.rand(count, generator=generator) < 0.5 if flips else torch.zeros(count, dtype=torch.bool)
    )
    up_down = torch.rand(count, generator=generator) < 0.5 if flips else torch.zeros(count, dtype=torch.bool)
    turns = (
        torch.randint(0, 4, (count,), generator=generator)
        if rotations
        else torch.zeros(count, dtype=torch.long)
    )
    out = []
    for image, lr, ud, k in zip(images, left_right, up_down, turns):
        flipped = image.flip(2) if lr else image
        flipped = flipped.flip(1) if ud else flipped
        out.append(flipped.rot90(int(k), dims=(1, 2)))
    return torch.stack(out)


@pytest.mark.parametrize(("flips", "rotations"), [(True, True), (True, False), (False, True), (False, False)])
def test_symmetries_are_the_drawn_flips_and_quarter_turns_of_each_image(flips, rotations):
    images = _batch()
    out = random_symmetries(images, torch.Generator().manual_seed(1), flips, rotations)
    assert torch.equal(out, _flips_then_turns(images, torch.Generator().manual_seed(1), flips, rotations))
    kinds = {
        next(i for i, s in enumerate(_all_symmetries(x)) if torch.equal(s, y)) for x, y in zip(images, out)
    }
    assert (
        len(kinds)
        == {(True, True): 8, (True, False): 4, (False, True): 4, (False, False): 1}[(flips, rotations)]
    )


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
        shifts |= {
            (dy, dx)
            for dy in range(-pad, pad + 1)
            for dx in range(-pad, pad + 1)
            if torch.equal(padded[:, pad + dy : pad + dy + side, pad + dx : pad + dx + side], crop)
        }
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


# Intensity and stain-colour jitter (ColorJitter): each batched op against torchvision's, image by image.

from torchvision.transforms.v2 import functional as TF  # noqa: E402

from malaria_pipeline.ml import augment  # noqa: E402
from malaria_pipeline.ml.augment import ColorJitter  # noqa: E402
from malaria_pipeline.ml.loader import BatchLoader  # noqa: E402

KNOBS = ("brightness", "contrast", "gamma", "saturation", "hue")


def _random_images(count=32, size=6, seed=0, gray=False):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(
        0, 256, (count, 1 if gray else 3, size, size), dtype=torch.uint8, generator=generator
    )
    images[0], images[1] = 0, 255  # the ends of the range
    return images.expand(-1, 3, -1, -1).clone() if gray else images


def _torchvision(knob, image, factor):
    """torchvision's own op, one scalar factor, on one float image in [0, 1]."""
    return getattr(TF, f"adjust_{knob}")(image, float(factor))


@pytest.mark.parametrize("knob", KNOBS)
def test_each_batched_jitter_is_torchvisions_op_with_each_images_own_factor(knob):
    images = _random_images().float() / 255
    generator = torch.Generator().manual_seed(1)
    factors = (
        torch.rand(len(images), generator=generator) - 0.5
        if knob == "hue"
        else torch.rand(len(images), generator=generator) * 2
    )
    factors[0] = 0.0 if knob != "gamma" else 0.05
    out = getattr(augment, f"adjust_{knob}")(images, factors)
    expected = torch.stack([_torchvision(knob, image, f) for image, f in zip(images, factors)])
    assert out.shape == images.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)


def _jitter_by_hand(images, generator, amounts):
    """The reference: torchvision's op image by image, one torch.rand draw per image for each amount > 0
    in the order of KNOBS, mapped to [1 - a, 1 + a] ([-a, a] for hue), rounded to uint8 at the end."""
    images = images.float() / 255
    for knob in KNOBS:
        amount = amounts.get(knob, 0.0)
        if amount:
            draws = torch.rand(len(images), generator=generator)
            factors = (0.0 if knob == "hue" else 1.0) + amount * (2 * draws - 1)
            images = torch.stack([_torchvision(knob, image, f) for image, f in zip(images, factors)])
    return (images * 255).round().to(torch.uint8)


@pytest.mark.parametrize(
    "amounts",
    [
        {"brightness": 0.4},
        {"contrast": 0.5},
        {"gamma": 0.6},
        {"saturation": 0.7},
        {"hue": 0.3},
        {"brightness": 0.2, "contrast": 0.3, "gamma": 0.4, "saturation": 0.5, "hue": 0.1},
        {"brightness": 0.2, "hue": 0.1},  # the zero amounts between them draw nothing
    ],
)
def test_jitter_draws_one_factor_per_image_in_order_and_applies_torchvisions_ops(amounts):
    images = _random_images(count=64)
    out = ColorJitter(**amounts)(images, torch.Generator().manual_seed(5))
    expected = _jitter_by_hand(images, torch.Generator().manual_seed(5), amounts)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    difference = (out.int() - expected.int()).abs()
    assert difference.max() <= 1 and (difference == 0).float().mean() > 0.99  # float rounding at .5 only
    assert not torch.equal(out, images)


def _measured_factors(knob, amount, count=400):
    """Each image's factor, measured on probe images (per image: one pixel or two) with no torch code:
    brightness from a grey 100, contrast from the spread of a grey 50 and 150, gamma from a grey 64,
    saturation from the spread of red and green in (200, 100, 100), hue with colorsys from pure red."""
    import colorsys

    probe = {
        "brightness": [[100, 100]] * 3,
        "contrast": [[50, 150]] * 3,
        "gamma": [[64, 64]] * 3,
        "saturation": [[200, 200], [100, 100], [100, 100]],
        "hue": [[255, 255], [0, 0], [0, 0]],
    }[knob]
    images = torch.tensor(probe, dtype=torch.uint8)[None, :, None, :].expand(count, -1, -1, -1).contiguous()
    out = ColorJitter(**{knob: amount})(images, torch.Generator().manual_seed(9)).tolist()
    if knob == "brightness":
        return [image[0][0][0] / 100 for image in out]
    if knob == "contrast":
        return [(image[0][0][1] - image[0][0][0]) / 100 for image in out]
    if knob == "gamma":
        return [math.log(image[0][0][0] / 255) / math.log(64 / 255) for image in out]
    if knob == "saturation":
        return [(image[0][0][0] - image[1][0][0]) / 100 for image in out]
    hues = [colorsys.rgb_to_hsv(*(image[c][0][0] / 255 for c in range(3)))[0] for image in out]
    return [(h + 0.5) % 1 - 0.5 for h in hues]


@pytest.mark.parametrize(
    ("knob", "amount", "tolerance"),
    [
        ("brightness", 0.5, 0.006),
        ("contrast", 0.5, 0.011),
        ("gamma", 0.5, 0.01),
        ("saturation", 0.8, 0.011),
        ("hue", 0.25, 0.002),
    ],
)
def test_each_factor_is_drawn_across_its_whole_range_and_no_further(knob, amount, tolerance):
    factors = _measured_factors(knob, amount)
    low, high = (-amount, amount) if knob == "hue" else (1 - amount, 1 + amount)
    assert low - tolerance <= min(factors) < low + 0.05 * (high - low)
    assert high - 0.05 * (high - low) < max(factors) <= high + tolerance
    assert len({round(f, 2) for f in factors}) > 50  # one factor per image


def test_brightness_saturates_at_white_instead_of_wrapping_around():
    images = torch.full((200, 3, 2, 2), 250, dtype=torch.uint8)
    out = ColorJitter(brightness=0.1)(
        images, torch.Generator().manual_seed(0)
    )  # 250 × [0.9, 1.1]: [225, 255]
    assert out.dtype == torch.uint8 and (out == 255).sum() > 600  # 275 wrapped around would read 19
    assert out.min() >= 225 and out.min() < 228


def test_hue_and_saturation_leave_a_grayscale_image_as_it_is_and_the_rest_keeps_it_grayscale():
    images = _random_images(count=64, gray=True)
    assert torch.equal(ColorJitter(saturation=1.0, hue=0.5)(images, torch.Generator().manual_seed(0)), images)
    everything = ColorJitter(brightness=0.5, contrast=0.5, gamma=0.5, saturation=1.0, hue=0.5)
    out = everything(images, torch.Generator().manual_seed(0))
    assert (
        torch.equal(out[:, 0], out[:, 1])
        and torch.equal(out[:, 0], out[:, 2])
        and not torch.equal(out, images)
    )


def test_zero_jitter_augments_bit_for_bit_as_before_and_draws_nothing():
    from tests.helpers import train_config

    images = _random_images(count=64, size=8)
    augmentation = train_config(pad=2).augmentation  # TRAIN_PARAMS: every jitter amount 0
    assert augmentation.jitter == ColorJitter()
    ours, theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    out = augmentation(images, ours)
    # What Augmentation.__call__ was before jitter existed: crop, then symmetries, from the same generator.
    before = random_symmetries(random_crop(images, 2, theirs), theirs, True, True)
    assert torch.equal(out, before) and torch.equal(ours.get_state(), theirs.get_state())
    generator = torch.Generator().manual_seed(3)
    assert ColorJitter()(images, generator) is images
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(3).get_state())


@pytest.mark.parametrize("knob", KNOBS)
def test_jitter_leaves_the_labels_alone(knob):
    images, labels = _random_images(count=40), torch.arange(40) % 2
    plain = BatchLoader(
        images=images,
        labels=labels,
        batch_size=8,
        generator=torch.Generator().manual_seed(0),
        augment=Augmentation(0, False, False),
    )
    jittered = BatchLoader(
        images=images,
        labels=labels,
        batch_size=8,
        generator=torch.Generator().manual_seed(0),
        augment=Augmentation(0, False, False, ColorJitter(**{knob: 0.3})),
    )
    pairs = list(zip(plain, jittered))  # one pass: the order is drawn before any jitter
    assert all(torch.equal(a_labels, b_labels) for (_, a_labels), (_, b_labels) in pairs)
    assert any(not torch.equal(a_images, b_images) for (a_images, _), (b_images, _) in pairs)
