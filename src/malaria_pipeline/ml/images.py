"""Check and decode one image file into a square ``uint8, 3×S×S`` array, as training and inference see it.

Every file goes through :func:`decode_cell_image`: the header alone (PNG ``IHDR``, JPEG ``SOF``, read by
Pillow) gives the size, which :class:`ImageLimits` checks before a single pixel is decoded, so a decompression bomb
(a small file that decodes to gigabytes) or a file that cannot be a cell crop is refused cheaply with
a reason naming its size and the parameter that sets the limit. Ingestion, the ``inference`` pipeline
and the served model all call it.

Cells are fitted, not cropped: the longer side is resized to S keeping the aspect ratio and the
shorter side is padded with black (value 0) on both sides. The crops of the NIH data set already
sit on a black background, and a crop could cut off a parasite at the cell's edge.

Pillow and NumPy alone, no PyTorch: the served model and Spark's workers decode with this module on
ONNX Runtime without importing torch, and every path decodes a file to the same pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"

# Pillow's modes of 16-bit grayscale PNGs.
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L")

# What a decoder may raise on a broken or hostile file. Pillow's DecompressionBombError is not an
# OSError; Pillow raises ValueError for oversized text chunks, SyntaxError for broken headers.
DECODE_ERRORS = (RuntimeError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class UnreadableImageError(ValueError):
    """The bytes are not a decodable PNG or JPEG image, or not a plausible cell crop; the message says why."""


@dataclass(frozen=True)
class ImageInfo:
    """What the file held before decoding: size in pixels and PIL mode (``L``, ``RGB``, ``P``, ``I;16``...)."""

    width: int
    height: int
    mode: str


@dataclass(frozen=True, kw_only=True)
class ImageLimits:
    """What a file must be to be decoded as a cell crop, checked before decoding.

    The official crops are 46 to 394 pixels a side, nearly square; see ``image_limits`` in
    ``conf/base/parameters_ingestion.yml`` for the defaults and why.

    Attributes:
        max_file_bytes: largest file, in bytes (checked before the file is read whole).
        max_pixels: largest width × height.
        min_side: smallest width or height, in pixels.
        max_aspect_ratio: largest ratio of the longer side to the shorter.
        parameter: the parameter that sets these limits, named in every message.
    """

    max_file_bytes: int
    max_pixels: int
    min_side: int
    max_aspect_ratio: float
    parameter: str = "ingestion.image_limits"

    @classmethod
    def from_params(cls, params: dict[str, Any], parameter: str) -> ImageLimits:
        """The limits of a parameters group such as ``ingestion.image_limits``; an unknown key is an error."""
        known = [f.name for f in fields(cls) if f.name != "parameter"]
        unknown = sorted(set(params) - set(known))
        missing = sorted(set(known) - set(params))
        if unknown or missing:
            raise ValueError(
                f"{parameter} has unknown keys {unknown} or lacks {missing}: it takes exactly {known}"
            )
        return cls(**{name: params[name] for name in known}, parameter=parameter)

    def check_file_size(self, n_bytes: int) -> None:
        """Raises :class:`UnreadableImageError` for a file larger than ``max_file_bytes``."""
        if n_bytes > self.max_file_bytes:
            raise UnreadableImageError(
                f"file of {n_bytes:,} bytes is larger than {self.parameter}.max_file_bytes "
                f"({self.max_file_bytes:,}): not read; raise that limit if such files are real cell crops"
            )

    def check(self, info: ImageInfo) -> None:
        """Raises :class:`UnreadableImageError` for a size that cannot be a cell crop."""
        width, height = info.width, info.height
        size = f"image of {width} × {height} pixels"
        if width * height > self.max_pixels:
            raise UnreadableImageError(
                f"{size} ({width * height:,} pixels) is larger than {self.parameter}.max_pixels "
                f"({self.max_pixels:,}): not decoded (a decompression bomb or not a cell crop); raise "
                "that limit if such images are real cell crops"
            )
        if min(width, height) < max(1, self.min_side):
            raise UnreadableImageError(
                f"{size} is smaller than {self.parameter}.min_side ({self.min_side} pixels a side): too "
                "small to be a cell crop"
            )
        ratio = max(width, height) / min(width, height)
        if ratio > self.max_aspect_ratio:
            raise UnreadableImageError(
                f"{size} is more elongated ({ratio:.1f}:1) than {self.parameter}.max_aspect_ratio "
                f"({self.max_aspect_ratio:g}:1): not a cell crop"
            )


def decode_cell_image(data: bytes, size: int, limits: ImageLimits) -> tuple[np.ndarray, ImageInfo]:
    """Checks a PNG or JPEG file against ``limits``, decodes it and fits it into a square.

    Args:
        data: the file's bytes.
        size: the side S of the output in pixels.
        limits: what the file must be to be decoded.

    Returns:
        ``uint8, 3×S×S`` (grayscale repeated on 3 channels, alpha dropped, palettes expanded, 16-bit
        samples reduced to their high byte) and the file's own size and mode.

    Raises:
        UnreadableImageError: the file is empty, not a PNG or JPEG, truncated or corrupt, or outside
            ``limits`` (then it is not decoded).
    """
    limits.check_file_size(len(data))
    with _open(data) as image:
        info = ImageInfo(width=image.width, height=image.height, mode=image.mode)
        limits.check(info)
        try:
            pixels = _rgb_array(image)
        except DECODE_ERRORS as error:
            raise UnreadableImageError(f"truncated or corrupt image ({_reason(error)})") from error
    return fit_square(pixels, size).transpose(2, 0, 1).copy(), info


def _open(data: bytes) -> Image.Image:
    """The image of a PNG or JPEG file, its header read, no pixel decoded yet.

    Pillow decodes, not torchvision: torchvision's PNG decoder (0.29) crashes the process (SIGSEGV)
    on a PNG whose compressed data is corrupt ("libpng error: IDAT: incorrect data check"), where
    Pillow raises an exception.
    """
    if not data:
        raise UnreadableImageError("empty file (0 bytes)")
    if data.startswith(PNG_SIGNATURE):
        image_file = PngImagePlugin.PngImageFile
    elif data.startswith(JPEG_SIGNATURE):
        image_file = JpegImagePlugin.JpegImageFile
    else:
        raise UnreadableImageError(f"not a PNG or JPEG image (the file starts with {data[:8]!r})")
    try:
        # The format's own class reads the header; Image.open would add Pillow's decompression-bomb
        # check, which raises before the size can be reported against our limit.
        return image_file(io.BytesIO(data))
    except DECODE_ERRORS as error:
        raise UnreadableImageError(f"truncated or corrupt image ({_reason(error)})") from error


def _rgb_array(image: Image.Image) -> np.ndarray:
    """``uint8, H×W×3`` pixels of a Pillow image of any PNG or JPEG mode."""
    if image.mode in SIXTEEN_BIT_MODES:  # 16-bit grayscale: the high byte, as Pillow reads 16-bit RGB
        gray = (np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes ``uint8, H×W×3`` so that its longer side is ``size``, then pads it to ``size×size×3`` with 0.

    The image stays centred; an odd padding puts the extra pixel at the bottom or right. Pillow's
    antialiased bilinear filter resizes (what torchvision's ``antialias=True`` imitates; they differ by
    at most one grey level).
    """
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    if (new_height, new_width) != (height, width):
        resized = Image.fromarray(np.ascontiguousarray(image), "RGB").resize(
            (new_width, new_height), Image.Resampling.BILINEAR
        )
        image = np.asarray(resized)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    square = np.zeros((size, size, image.shape[2]), dtype=np.uint8)
    square[top : top + new_height, left : left + new_width] = image
    return square


def one_line(text: str) -> str:
    """``text`` on one line: a reason goes into a log line or a report field."""
    return " ".join(str(text).split())


def _reason(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return one_line(lines[0]) if lines else type(error).__name__
