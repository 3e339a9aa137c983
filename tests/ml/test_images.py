import io
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from malaria_pipeline.ml.images import ImageLimits, UnreadableImageError, decode_cell_image, fit_square
from tests.helpers import ANY_IMAGE, base_image_limits, bomb_png, corrupt_idat_png, image_bytes, raw_png


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_grayscale_is_repeated_on_three_channels():
    data = image_bytes(16, 16, "L")
    image, info = decode_cell_image(data, 16, ANY_IMAGE)
    assert image.dtype == np.uint8 and image.shape == (3, 16, 16)
    assert np.array_equal(image[0], image[1]) and np.array_equal(image[1], image[2])
    assert np.array_equal(image[0], np.asarray(Image.open(io.BytesIO(data))))
    assert (info.width, info.height, info.mode) == (16, 16, "L")


def test_rgb_pixels_are_kept_at_the_same_size():
    data = image_bytes(12, 12, "RGB")
    image, info = decode_cell_image(data, 12, ANY_IMAGE)
    assert np.array_equal(image.transpose(1, 2, 0), _pixels(data))
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
    assert image.dtype == np.uint8 and int(image.min()) == 255


def test_jpeg_is_decoded():
    image, info = decode_cell_image(image_bytes(30, 20, "RGB", fmt="JPEG"), 32, ANY_IMAGE)
    assert image.shape == (3, 32, 32) and (info.width, info.height) == (30, 20)


def test_fit_square_keeps_aspect_ratio_and_pads_with_black():
    # 40 wide, 20 high, all white: resized to 32×16 and padded by 8 rows above and below.
    image = np.full((20, 40, 3), 255, dtype=np.uint8)
    square = fit_square(image, 32)
    assert square.shape == (32, 32, 3)
    assert int(square[:8].max()) == 0 and int(square[24:].max()) == 0
    assert int(square[8:24].min()) == 255


def test_fit_square_of_a_tall_image_pads_the_sides():
    square = fit_square(np.full((30, 10, 3), 200, dtype=np.uint8), 30)
    assert int(square[:, :10].max()) == 0 and int(square[:, 20:].max()) == 0
    assert int(square[:, 10:20].min()) == 200


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


# The limits of conf/base, read from the YAML.
LIMITS = ImageLimits.from_params(base_image_limits(), "ingestion.image_limits")


def test_a_decompression_bomb_is_refused_from_its_header_with_its_size_and_the_parameter():
    bomb = bomb_png(20_000, 20_000)
    assert len(bomb) < 1_000_000  # tens of kB that would decode to 1.2 GB of RGB
    started = time.perf_counter()
    with pytest.raises(UnreadableImageError) as raised:
        decode_cell_image(bomb, 16, LIMITS)
    assert time.perf_counter() - started < 1  # decoding it would take seconds and 1.2 GB
    message = str(raised.value)
    assert "20000 × 20000 pixels (400,000,000 pixels)" in message
    assert "ingestion.image_limits.max_pixels (16,777,216)" in message


def test_a_jpeg_whose_header_claims_a_huge_size_is_refused_before_decoding():
    data = bytearray(image_bytes(32, 32, "RGB", fmt="JPEG"))
    sof = data.find(b"\xff\xc0")  # baseline frame header: length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = (60_000).to_bytes(2, "big") + (50_000).to_bytes(2, "big")
    with pytest.raises(UnreadableImageError, match=r"image of 50000 × 60000 pixels \(3,000,000,000 pixels\)"):
        decode_cell_image(bytes(data), 16, LIMITS)


@pytest.mark.parametrize(
    ("width", "height", "reason"),
    [
        (
            15,
            40,
            r"image of 15 × 40 pixels is smaller than ingestion.image_limits.min_side \(16 pixels a side\)",
        ),
        (1, 1, r"image of 1 × 1 pixels is smaller than"),
        (
            200,
            49,
            r"image of 200 × 49 pixels is more elongated \(4.1:1\) than ingestion.image_limits.max_aspect_ratio \(4:1\)",
        ),
        (17, 300, r"more elongated \(17.6:1\)"),
    ],
)
def test_images_too_small_or_too_elongated_to_be_a_cell_crop_are_refused(width, height, reason):
    with pytest.raises(UnreadableImageError, match=reason):
        decode_cell_image(image_bytes(width, height, "L"), 16, LIMITS)


@pytest.mark.parametrize(("width", "height"), [(16, 16), (64, 16), (16, 64), (394, 394)])
def test_images_at_the_limits_are_decoded(width, height):
    image, info = decode_cell_image(image_bytes(width, height, "RGB"), 16, LIMITS)
    assert image.shape == (3, 16, 16) and (info.width, info.height) == (width, height)


def test_a_file_larger_than_max_file_bytes_is_refused_before_its_header_is_read():
    limits = ImageLimits(
        max_file_bytes=1000,
        max_pixels=10**6,
        min_side=1,
        max_aspect_ratio=10,
        parameter="inference.image_limits",
    )
    data = image_bytes(40, 40)
    with pytest.raises(
        UnreadableImageError,
        match=rf"file of {len(data):,} bytes is larger than inference.image_limits.max_file_bytes \(1,000\)",
    ):
        decode_cell_image(data, 16, limits)


def test_a_png_whose_text_chunk_decompresses_to_megabytes_is_refused_not_raised():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 20_000_000, zip=True)  # a few kB compressed, above Pillow's text limit
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, "PNG", pnginfo=info)
    with pytest.raises(UnreadableImageError, match="truncated or corrupt image"):
        decode_cell_image(buffer.getvalue(), 16, LIMITS)


def test_sixteen_bit_grayscale_matches_pillows_samples_scaled_to_eight_bits():
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 65536, size=(20, 24), dtype=np.uint16)
    data = raw_png(samples)
    pillow = Image.open(io.BytesIO(data))
    assert pillow.mode == "I;16"
    expected = (np.asarray(pillow).astype(np.uint32) >> 8).astype(np.uint8)  # the high byte of each sample
    image, info = decode_cell_image(data, 24, ANY_IMAGE)
    assert info.mode == "I;16"
    # fitted: 24 wide, 20 high, so 2 black rows above and below
    assert np.array_equal(image[:, 2:22], np.broadcast_to(expected, (3, 20, 24)))


def test_sixteen_bit_rgb_matches_pillows_own_conversion():
    rng = np.random.default_rng(1)
    samples = rng.integers(0, 65536, size=(18, 18, 3), dtype=np.uint16)
    data = raw_png(samples)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # Pillow reads 16-bit RGB as 8-bit
    image, _ = decode_cell_image(data, 18, ANY_IMAGE)
    assert np.array_equal(image.transpose(1, 2, 0), expected)


def test_limits_from_parameters_refuse_an_unknown_key():
    with pytest.raises(ValueError, match=r"inference.image_limits has unknown keys \['max_pixel'\]"):
        ImageLimits.from_params({**base_image_limits(), "max_pixel": 5}, "inference.image_limits")


def test_a_png_with_corrupt_compressed_data_is_refused_and_the_process_lives(tmp_path):
    # torchvision 0.29's PNG decoder crashes the process (SIGSEGV) on this file: run it apart.
    path = tmp_path / "corrupt.png"
    path.write_bytes(corrupt_idat_png())
    script = (
        "import sys; from pathlib import Path; from tests.helpers import ANY_IMAGE; "
        "from malaria_pipeline.ml.images import UnreadableImageError, decode_cell_image\n"
        "try:\n    decode_cell_image(Path(sys.argv[1]).read_bytes(), 16, ANY_IMAGE)\n"
        "except UnreadableImageError as error:\n    print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("truncated or corrupt image")


# Mutants found by mutmut (docs/mutation-testing.md)


def _pillow_reason(data: bytes) -> str:
    """The first line of the error Pillow itself raises on ``data``."""
    try:
        Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as error:  # noqa: BLE001 - whatever Pillow raises is the reference
        return " ".join(str(error).splitlines()[0].split())
    raise AssertionError("Pillow decoded it")


@pytest.mark.parametrize(
    "data",
    [image_bytes(40, 40)[:200], image_bytes(64, 64, fmt="JPEG")[:300]],
    ids=["truncated-png", "truncated-jpeg"],
)
def test_unreadable_files_are_named_in_full(data):
    with pytest.raises(UnreadableImageError) as raised:
        decode_cell_image(data, 16, ANY_IMAGE)
    assert str(raised.value) == f"truncated or corrupt image ({_pillow_reason(data)})"
    for other, message in (
        (b"", "empty file (0 bytes)"),
        (b"this is a text file", "not a PNG or JPEG image (the file starts with b'this is ')"),
    ):
        with pytest.raises(UnreadableImageError) as raised:
            decode_cell_image(other, 16, ANY_IMAGE)
        assert str(raised.value) == message


def test_a_reason_is_the_first_line_on_one_line_or_the_error_type():
    from malaria_pipeline.ml.images import _reason

    assert _reason(ValueError("  broken   chunk\n  at byte 3")) == "broken chunk"
    assert _reason(OSError()) == "OSError"


def test_sizes_at_each_limit_are_accepted():
    data = image_bytes(20, 10)
    exact = ImageLimits(max_file_bytes=len(data), max_pixels=200, min_side=10, max_aspect_ratio=2.0)
    image, info = decode_cell_image(data, 16, exact)
    assert (info.width, info.height) == (20, 10) and image.shape == (3, 16, 16)
    one_pixel = ImageLimits(max_file_bytes=2**20, max_pixels=1, min_side=1, max_aspect_ratio=1.0)
    assert decode_cell_image(image_bytes(1, 1), 4, one_pixel)[1].width == 1


def test_limits_from_parameters_take_exactly_the_known_keys():
    params = base_image_limits()
    assert ImageLimits.from_params(params, "inference.image_limits") == ImageLimits(
        **params, parameter="inference.image_limits"
    )
    missing = {k: v for k, v in params.items() if k != "min_side"}
    with pytest.raises(
        ValueError, match=r"inference.image_limits has unknown keys \[\] or lacks \['min_side'\]"
    ):
        ImageLimits.from_params(missing, "inference.image_limits")


@pytest.mark.parametrize(("height", "width"), [(1, 64), (64, 1)])
def test_a_strip_one_pixel_thin_stays_one_pixel_thin(height, width):
    square = fit_square(np.full((height, width, 3), 200, dtype=np.uint8), 16)
    lit = square[:, :, 0] > 0
    assert (lit.any(axis=1).sum(), lit.any(axis=0).sum()) == ((1, 16) if height == 1 else (16, 1))


def test_downscaling_averages_fine_detail_instead_of_skipping_it():
    stripes = np.zeros((64, 64, 3), dtype=np.uint8)
    stripes[:, 0::4] = 255  # one lit column in four: a quarter of the light
    square = fit_square(stripes, 16).astype(np.float64)
    assert 40 < square.mean() < 90 and square.std() < 40  # about 255 / 4 everywhere, not 0 or 255


def test_size_refusals_are_named_in_full():
    limits = ImageLimits(
        max_file_bytes=2**20, max_pixels=100, min_side=8, max_aspect_ratio=2.0, parameter="p"
    )
    with pytest.raises(UnreadableImageError) as raised:
        decode_cell_image(image_bytes(11, 10), 4, limits)
    assert str(raised.value) == (
        "image of 11 × 10 pixels (110 pixels) is larger than p.max_pixels (100): not decoded (a decompression bomb or "
        "not a cell crop); raise that limit if such images are real cell crops"
    )
    with pytest.raises(UnreadableImageError) as raised:
        decode_cell_image(image_bytes(7, 9), 4, limits)
    assert (
        str(raised.value)
        == "image of 7 × 9 pixels is smaller than p.min_side (8 pixels a side): too small to be a cell crop"
    )


def test_resizing_matches_torchvision_antialiased_resize_within_one_grey_level():
    """Pillow resizes (no torch on the ONNX path); torchvision's ``antialias=True``, which training used
    before, is the independent reference: at most one grey level apart, on the mean well under that."""
    import torch
    import torchvision.transforms.v2.functional as F

    rng = np.random.default_rng(7)
    for height, width, size in [(143, 131, 64), (61, 200, 50), (48, 46, 64), (394, 310, 50)]:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        square = fit_square(pixels, size)
        scale = size / max(height, width)
        new_height, new_width = round(height * scale), round(width * scale)
        reference = F.resize(
            torch.from_numpy(pixels).permute(2, 0, 1), [new_height, new_width], antialias=True
        )
        top, left = (size - new_height) // 2, (size - new_width) // 2
        ours = square[top : top + new_height, left : left + new_width].astype(int)
        gap = np.abs(ours - reference.permute(1, 2, 0).numpy().astype(int))
        assert gap.max() <= 1 and gap.mean() < 0.5
