"""Read-only access to a collection of cell images: a ``.zip`` archive or a folder.

No Kedro and no torch here: an :class:`ImageArchive` is a small, picklable description (a path),
so that worker processes can open it themselves and read their share of the images.
"""

from __future__ import annotations

import functools
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# The official archive holds cell_images/{Parasitized,Uninfected}/*.png; the class folders may also sit
# at the top level.
ROOT_FOLDER = "cell_images"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ZIP_SIGNATURE = b"PK\x03\x04"


class ArchiveError(ValueError):
    """The source is missing, unreadable, or holds no usable images."""


@dataclass(frozen=True)
class ImageArchive:
    """A zip archive or a folder of image files.

    Attributes:
        path: the local ``.zip`` file or folder.
        source: what the user named (a URL or a path), for messages.
    """

    path: Path
    source: str

    @classmethod
    def open(
        cls, path: str | Path, source: str | None = None, parameter: str = "ingestion.source"
    ) -> ImageArchive:
        """Checks that ``path`` is a folder or a zip archive and describes it.

        Args:
            path: the local ``.zip`` file or folder.
            source: what the user named, for messages (default: ``path``).
            parameter: the parameter that names the source, for messages.

        Raises:
            ArchiveError: ``path`` does not exist or is neither a folder nor a zip archive.
        """
        path = Path(path).expanduser().resolve()
        source = source or str(path)
        if not path.exists():
            raise ArchiveError(
                f"Image source {source!r} does not exist. Set {parameter} to a .zip archive or a folder of "
                f'images, for example --params "{parameter}=/abs/path/cell_images.zip".'
            )
        if not path.is_dir() and not zipfile.is_zipfile(path):
            with path.open("rb") as file:
                if file.read(4) == ZIP_SIGNATURE:  # a zip's first entry, but no directory at its end
                    raise ArchiveError(
                        f"Image source {source!r} is a damaged or truncated zip archive ({path.stat().st_size} "
                        f"bytes, without the directory that ends a zip): copy or download it again, or point "
                        f"{parameter} at the extracted folder."
                    )
            raise ArchiveError(
                f"Image source {source!r} is neither a folder nor a zip archive ({path.stat().st_size} "
                f"bytes). Point {parameter} at the .zip file or at the extracted folder."
            )
        return cls(path=path, source=source)

    @property
    def is_zip(self) -> bool:
        return not self.path.is_dir()

    def members(self) -> list[str]:
        """Every file in the archive as a POSIX path relative to its top, sorted."""
        if self.is_zip:
            names = (info.filename for info in _zip(self.path).infolist() if not info.is_dir())
        else:
            names = (p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())
        return sorted(names)

    def size(self, member: str) -> int:
        """The size of one member in bytes (uncompressed), read without reading the member."""
        if self.is_zip:
            return _zip(self.path).getinfo(member).file_size
        return (self.path / member).stat().st_size

    def read(self, member: str) -> bytes:
        """The bytes of one member, as stored (no decoding)."""
        if self.is_zip:
            return _zip(self.path).read(member)
        return (self.path / member).read_bytes()


@functools.lru_cache(maxsize=4)
def _zip(path: Path) -> zipfile.ZipFile:
    # One open handle per archive and process; zipfile serialises reads on it.
    return zipfile.ZipFile(path)


def check_source(param: str | None, archive: ImageArchive, parameter: str, global_name: str) -> None:
    """Checks that the source parameter names what the catalog read.

    ``--params`` and ``conf/local/globals.yml`` set both the parameter and the catalog entry; a value
    written into the parameters file alone reaches only the parameter, and the run would read other
    images than it logs.

    Raises:
        ArchiveError: they differ.
    """
    if param is None:
        return
    if "://" in str(param):
        if param == archive.source:
            return
    elif Path(param).expanduser().resolve() == Path(archive.source).resolve():
        return
    raise ArchiveError(
        f"{parameter} is {param!r} but the catalog read {archive.source!r}. Set the source with "
        f'--params "{parameter}=..." or with {global_name} in conf/local/globals.yml: both reach the '
        "catalog, a value written in the parameters file alone does not."
    )


def sort_members(members: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Sorts archive files into image candidates per class and files to skip.

    The class folders are ``cell_images/<class>/`` when the archive has a ``cell_images`` folder
    (the official layout), else ``<class>/`` at the top level; a class is named by its folder.

    Returns:
        ``(member, class)`` for each file with an image suffix directly inside a class folder, and
        ``(member, reason)`` for every other file.
    """
    root = ROOT_FOLDER if any(m.startswith(ROOT_FOLDER + "/") for m in members) else ""
    root_parts = (root,) if root else ()
    expected = f"{root}/<class>/<file>" if root else "<class>/<file>"
    candidates, skipped = [], []
    for member in members:
        path = PurePosixPath(member)
        if len(path.parts) != len(root_parts) + 2 or path.parts[: len(root_parts)] != root_parts:
            skipped.append((member, f"outside the class folders (expected {expected})"))
        elif not member.lower().endswith(IMAGE_SUFFIXES):
            skipped.append((member, not_an_image_reason(member)))
        else:
            candidates.append((member, path.parts[-2]))
    return candidates, skipped


def image_members(members: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files with an image suffix anywhere in the archive (new cells: no class folders), and the rest
    as ``(member, reason)``."""
    candidates = [m for m in members if m.lower().endswith(IMAGE_SUFFIXES)]
    skipped = [(m, not_an_image_reason(m)) for m in members if not m.lower().endswith(IMAGE_SUFFIXES)]
    return candidates, skipped


def not_an_image_reason(member: str) -> str:
    suffix = PurePosixPath(member).suffix
    return f"not an image file (suffix {suffix or 'none'!r}; expected .png, .jpg or .jpeg)"


def patient_id(member: str) -> str | None:
    """The patient of a cell image: the file-name prefix before ``_IMG_``, or None without one.

    ``C33P1thinF_IMG_20150619_114756a_cell_179.png`` belongs to ``C33P1thinF``.
    """
    name = PurePosixPath(member).name
    return name.split("_IMG_", 1)[0] if "_IMG_" in name else None
