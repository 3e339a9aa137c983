"""Decode the files of an archive on all cores and pack them into one tensor.

Worker processes each open the archive, read and decode their share of the files and send back
``uint8`` arrays. Each file is checked against :class:`~malaria_pipeline.ml.images.ImageLimits` before
it is read whole and before it is decoded; one broken or hostile file is recorded with its reason and
never stops the others.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from malaria_pipeline.ml.images import (
    ImageInfo,
    ImageLimits,
    UnreadableImageError,
    decode_cell_image,
    one_line,
)

logger = logging.getLogger(__name__)


class ImageArchive(Protocol):
    """Where the files come from (:class:`malaria_pipeline.cells.archive.ImageArchive`: a zip or a folder);
    picklable, so that worker processes can open it again."""

    def size(self, member: str) -> int: ...

    def read(self, member: str) -> bytes: ...


# Below this many files a process pool costs more (starting workers that import torch) than it saves.
MIN_FILES_PER_WORKER = 1000
CHUNK_FILES = 500


@dataclass(kw_only=True)
class PackedImages:
    """The decoded files, in the order they were given, and the ones that could not be decoded.

    Attributes:
        images: ``uint8, N×3×S×S``, one row per entry of ``members``.
        members: the archive paths of the decoded files.
        infos: width, height and mode of each decoded file.
        sha1: SHA-1 (hex) of each decoded file's bytes.
        skipped: ``(member, reason)`` for each file that could not be decoded.
    """

    images: torch.Tensor
    members: list[str] = field(default_factory=list)
    infos: list[ImageInfo] = field(default_factory=list)
    sha1: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def pack_images(
    archive: ImageArchive, members: list[str], size: int, limits: ImageLimits, workers: int | None = None
) -> PackedImages:
    """Decodes ``members`` of ``archive`` into ``uint8, N×3×size×size``, on ``workers`` processes.

    Args:
        archive: where the files are.
        members: the archive paths to decode, in the output's order.
        size: the side of the square output images, in pixels.
        limits: what a file must be to be read and decoded; the others are skipped with a reason.
        workers: processes to decode with; None uses every core. The workers are spawned, so a
            script that calls this needs the usual ``if __name__ == "__main__":`` guard.
    """
    workers = min(workers or os.cpu_count() or 1, max(1, len(members) // MIN_FILES_PER_WORKER))
    chunks = [members[i : i + CHUNK_FILES] for i in range(0, len(members), CHUNK_FILES)]
    images = torch.empty((len(members), 3, size, size), dtype=torch.uint8)
    packed = PackedImages(images=images)
    with tqdm(total=len(members), unit="img", desc="Decoding images", disable=None) as bar:
        for result in _map_chunks(archive, chunks, size, limits, workers):
            decoded, array, skipped = result
            start = len(packed.members)
            images[start : start + len(decoded)] = torch.from_numpy(array)
            for member, info, sha1 in decoded:
                packed.members.append(member)
                packed.infos.append(info)
                packed.sha1.append(sha1)
            packed.skipped.extend(skipped)
            bar.update(len(decoded) + len(skipped))
    # A slice would save the whole preallocated storage with it: keep a compact copy.
    packed.images = images[: len(packed.members)].clone() if packed.skipped else images
    logger.info(
        "Decoded %d of %d files into %s tensors on %d process(es); %d could not be decoded",
        len(packed.members),
        len(members),
        tuple(packed.images.shape),
        workers,
        len(packed.skipped),
    )
    return packed


def _map_chunks(archive: ImageArchive, chunks: list[list[str]], size: int, limits: ImageLimits, workers: int):
    if workers == 1:
        yield from (_decode_chunk(archive, chunk, size, limits) for chunk in chunks)
        return
    # spawn, not fork: the parent may hold threads (logging, progress bars) that fork would copy locked.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        n = len(chunks)
        yield from pool.map(_decode_chunk, [archive] * n, chunks, [size] * n, [limits] * n)


def _init_worker() -> None:
    # One decoding thread per process: the processes already use every core.
    torch.set_num_threads(1)


def _decode_chunk(
    archive: ImageArchive, members: list[str], size: int, limits: ImageLimits
) -> tuple[list[tuple[str, ImageInfo, str]], np.ndarray, list[tuple[str, str]]]:
    decoded, arrays, skipped = [], [], []
    for member in members:
        try:
            limits.check_file_size(archive.size(member))
            data = archive.read(member)
            image, info = decode_cell_image(data, size, limits)
        except UnreadableImageError as error:
            skipped.append((member, str(error)))
            continue
        except (OSError, zipfile.BadZipFile) as error:  # a bad CRC in the zip, a vanished file
            skipped.append((member, f"unreadable file ({one_line(error)})"))
            continue
        except Exception as error:  # noqa: BLE001 - one file never stops the others (an encrypted zip member...)
            skipped.append((member, f"unreadable file ({type(error).__name__}: {one_line(error)})"))
            continue
        decoded.append((member, info, hashlib.sha1(data).hexdigest()))
        arrays.append(image)
    array = np.stack(arrays) if arrays else np.empty((0, 3, size, size), dtype=np.uint8)
    return decoded, array, skipped
