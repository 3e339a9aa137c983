import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from malaria_pipeline.ml.images import UnreadableImageError, decode_cell_image, fit_square
from tests.helpers import ANY_IMAGE, image_bytes


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_grayscale_is_repeated_on_three_channels():
    data = image_bytes(16, 16, "L")
    image, info = decode_cell_image(data, 16, ANY_IMAGE)
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert np.array_equal(image[0].numpy(), np.asarray(Image.open(io.BytesIO(data))))
    assert (info.width, info.height, info.mode) == (16, 16, "L")


def test_rgb_pixels_are_kept_at_the_same_size():
    data = image_bytes(12, 12, "RGB")
    image, info = decode_cell_image(data, 12, ANY_IMAGE)
    assert np.array_equal(image.permute(1, 2, 0).numpy(), _pixels(data))
    assert info.mode == "RGB"


def test_alpha_is_dropped_and_mode_reported():
    data = image_bytes(10, 10, "RGBA")
    image, info = decode_cell_image(data, 10, ANY_IMAGE)
    assert image.shape == (3, 10, 10) and info.mode == "RGBA"


def test_palette_png_decodes_to_its_colours_not_its_indices():
    rgb = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]] * 2, dtype=np.uint8))
    buffer = io.BytesIO()
    rgb.convert("P").save(buffer, "PNG")
    image, info = decode_cell_image(buffer.getvalue(), 2, ANY_IMAGE)
    assert info.mode == "P"
    assert image[:, 0, 0].tolist() == [255, 0, 0] and image[:, 0, 1].tolist() == [0, 0, 255]


def test_sixteen_bit_png_is_scaled_to_uint8():
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(buffer, "PNG")
    image, _ = decode_cell_image(buffer.getvalue(), 4, ANY_IMAGE)
    assert image.dtype == torch.uint8 and int(image.min()) == 255


def test_jpeg_is_decoded():
    image, info = decode_cell_image(image_bytes(30, 20, "RGB", fmt="JPEG"), 32, ANY_IMAGE)
    assert image.shape == (3, 32, 32) and (info.width, info.height) == (30, 20)


def test_fit_square_keeps_aspect_ratio_and_pads_with_black():
    # 40 wide, 20 high, all white: resized to 32×16 and padded by 8 rows above and below.
    image = torch.full((3, 20, 40), 255, dtype=torch.uint8)
    square = fit_square(image, 32)
    assert square.shape == (3, 32, 32)
    assert int(square[:, :8].max()) == 0 and int(square[:, 24:].max()) == 0
    assert int(square[:, 8:24].min()) == 255


def test_fit_square_of_a_tall_image_pads_the_sides():
    square = fit_square(torch.full((3, 30, 10), 200, dtype=torch.uint8), 30)
    assert int(square[:, :, :10].max()) == 0 and int(square[:, :, 20:].max()) == 0
    assert int(square[:, :, 10:20].min()) == 200


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file (0 bytes)"),
        (b"this is a text file, not a picture", "not a PNG or JPEG image"),
        (image_bytes(40, 40)[:200], "truncated or corrupt image"),
        (image_bytes(64, 64, fmt="JPEG")[:300], "truncated or corrupt image"),
    ],
    ids=["empty", "text", "truncated-png", "truncated-jpeg"],
)
def test_unreadable_files_raise_with_their_reason(data, reason):
    with pytest.raises(UnreadableImageError, match=re.escape(reason)) as raised:
        decode_cell_image(data, 16, ANY_IMAGE)
    assert ".cpp" not in str(raised.value)
