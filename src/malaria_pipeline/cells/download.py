"""Download an archive once, resumably, and verify it.

The file streams to ``<dest_dir>/<name>.part`` and is renamed to ``<name>`` only once its size and
SHA-256 match. A cut connection keeps the ``.part`` file; the next attempt (in the same call, up to
``attempts`` times, or in a later run) asks the server for the rest with an HTTP Range request.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


class DownloadError(RuntimeError):
    """The archive could not be downloaded or did not verify."""


def is_url(source: str) -> bool:
    return urlparse(str(source)).scheme in ("http", "https")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def download_archive(
    url: str,
    dest_dir: str | Path,
    *,
    size: int | None = None,
    sha256: str | None = None,
    timeout: float = 10.0,
    attempts: int = 3,
) -> Path:
    """Downloads ``url`` into ``dest_dir`` unless a verified copy is already there.

    Args:
        url: an http(s) URL.
        dest_dir: the folder to keep the archive in (created if missing).
        size: expected size in bytes, or None to accept any.
        sha256: expected SHA-256 (hex), or None to skip the check.
        timeout: seconds to wait for the server to connect or send.
        attempts: how many times one call resumes after a cut connection.

    Returns:
        The path of the verified file.

    Raises:
        DownloadError: the server can't be reached (offline), answers with an error, the transfer is
            cut more than ``attempts`` times, or the file's checksum is wrong (the file is deleted).
    """
    name = PurePosixPath(urlparse(url).path).name or "archive.zip"
    dest = Path(dest_dir) / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if _matches(dest, size, sha256):
            logger.info("Using the verified copy of %s at %s", url, dest)
            return dest
        logger.warning("%s does not match the expected size or SHA-256: downloading it again", dest)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    _fetch_with_resumes(url, part, size=size, timeout=timeout, attempts=attempts)
    _verify(url, part, size, sha256)
    part.replace(dest)
    logger.info("Downloaded %s (%s bytes) to %s", url, f"{dest.stat().st_size:,}", dest)
    return dest


def _fetch_with_resumes(url: str, part: Path, *, size: int | None, timeout: float, attempts: int) -> None:
    for attempt in range(1, attempts + 1):
        try:
            return _fetch(url, part, size=size, timeout=timeout)
        except _Interrupted as cut:
            if attempt == attempts:
                raise DownloadError(
                    f"The download of {url} was cut {attempts} times ({cut}). {part} keeps the "
                    f"{part.stat().st_size:,} bytes received: run again to resume."
                ) from cut
            logger.warning("Download cut (%s); resuming (attempt %d of %d)", cut, attempt + 1, attempts)


def _verify(url: str, part: Path, size: int | None, sha256: str | None) -> None:
    """Deletes ``part`` and raises DownloadError when its size or SHA-256 is not the expected one."""
    received = part.stat().st_size
    if size is not None and received != size:
        part.unlink()
        raise DownloadError(
            f"The server sent {received:,} bytes of {url}, {size:,} were expected; deleted {part}. "
            "Run again, or download the archive by other means and set ingestion.source to it."
        )
    if sha256 is not None:
        actual = sha256_of(part)
        if actual != sha256.lower():
            part.unlink()
            raise DownloadError(
                f"The SHA-256 of the download of {url} is {actual}, expected {sha256}; deleted the "
                f"corrupt file {part}. Run again to download it anew."
            )


class _Interrupted(Exception):
    """The connection closed before the whole file arrived; the .part file keeps what came."""


def _fetch(url: str, part: Path, *, size: int | None, timeout: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset >= size:
        if offset == size:
            return
        part.unlink()  # longer than the file can be: start over
        offset = 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        raise DownloadError(f"The server answered {error.code} {error.reason} for {url}.") from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(
            f"Cannot reach {url} ({reason}): this machine may be offline. Download the archive "
            "elsewhere (or use a copy you have), then point the pipeline at it: "
            'kedro run --pipelines training --params "ingestion.source=/abs/path/cell_images.zip" '
            "(a .zip, or the folder it extracts to)."
        ) from error

    with response:
        if offset and response.status != 206:
            logger.info("The server ignored the resume request; downloading %s from the start", url)
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else size
        received = 0
        with (
            open(part, "ab" if offset else "wb") as file,
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=part.name, disable=None) as bar,
        ):
            try:
                while block := response.read(CHUNK_BYTES):
                    file.write(block)
                    received += len(block)
                    bar.update(len(block))
            except (http.client.IncompleteRead, OSError) as error:
                raise _Interrupted(f"{type(error).__name__} after {offset + received:,} bytes") from error
        if length is not None and received < int(length):
            raise _Interrupted(f"connection closed after {offset + received:,} of {total:,} bytes")


def _matches(path: Path, size: int | None, sha256: str | None) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    return sha256 is None or sha256_of(path) == sha256.lower()
