"""Decode one image file into a square ``uint8, 3×S×S`` tensor, as training and inference see it.

Cells are fitted, not cropped: the longer side is resized to S keeping the aspect ratio and the
shorter side is padded with black (value 0) on both sides. The crops of the NIH data set already
sit on a black background, and a crop could cut off a parasite at the cell's edge.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


class UnreadableImageError(ValueError):
    """The bytes are not a complete PNG or JPEG image; the message says why."""


@dataclass(frozen=True)
class ImageInfo:
    """What the file held before decoding: size in pixels and PIL mode (``L``, ``RGB``, ``P``...)."""

    width: int
    height: int
    mode: str


def decode_cell_image(data: bytes, size: int) -> tuple[torch.Tensor, ImageInfo]:
    """Decodes PNG or JPEG bytes and fits them into a square.

    Args:
        data: the file's bytes.
        size: the side S of the output in pixels.

    Returns:
        ``uint8, 3×S×S`` (grayscale repeated on 3 channels, alpha dropped) and the file's own size
        and mode.

    Raises:
        UnreadableImageError: the file is empty, not a PNG or JPEG, or truncated or corrupt.
    """
    if not data:
        raise UnreadableImageError("empty file (0 bytes)")
    if not data.startswith((PNG_SIGNATURE, JPEG_SIGNATURE)):
        raise UnreadableImageError(f"not a PNG or JPEG image (the file starts with {data[:8]!r})")
    try:
        # PIL reads only the header here; torchvision decodes the pixels.
        with Image.open(io.BytesIO(data)) as header:
            info = ImageInfo(width=header.width, height=header.height, mode=header.mode)
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, UnidentifiedImageError, SyntaxError) as error:
        raise UnreadableImageError(f"truncated or corrupt image ({_reason(error)})") from error
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = F.to_dtype(image, torch.uint8, scale=True)
    return fit_square(image, size), info


def fit_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resizes ``C×H×W`` so that its longer side is ``size``, then pads it to ``C×size×size`` with 0.

    The image stays centred; an odd padding puts the extra pixel at the bottom or right.
    """
    height, width = image.shape[-2:]
    scale = size / max(height, width)
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    if (new_height, new_width) != (height, width):
        image = F.resize(image, [new_height, new_width], antialias=True)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    square = image.new_zeros((image.shape[0], size, size))
    square[:, top : top + new_height, left : left + new_width] = image
    return square


def _reason(error: Exception) -> str:
    # torchvision's messages begin with the C++ source location ("decode_png.cpp:79, ...").
    text = re.sub(r"^.*\.cpp:\d+, ", "", str(error).strip().splitlines()[0]) if str(error).strip() else ""
    return text or type(error).__name__
