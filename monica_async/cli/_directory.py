"""A directory as the command line's input: the images in it, walked in a fixed order.

Every image file under the directory (recursively; hidden files and folders
skipped) is one input, numbered from 1 in the order of the walk: folders and files
sorted by name at every level. The numbering depends only on the names present, so
shards agree on it and ``--resume`` recognises an input as long as the folder does
not change (an added or removed file renumbers those after it, which ``--resume``
then sends again rather than skipping wrongly).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import attrs

from ._inputs import InputRecord
from ._options import UsageError

__all__ = ["IMAGE_SUFFIXES", "DirectorySource", "open_directory"]

#: File name endings taken as images (case-insensitive).
IMAGE_SUFFIXES: Final = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


@attrs.define(eq=False)
class DirectorySource:
    """The image files under a directory, as inputs.

    Attributes:
        name: The directory as given; the inputs are paths under it.
        skip: A directory whose contents are not inputs (the download directory).
    """

    name: str
    skip: Path | None = None
    #: Whether the input can be read twice to be counted first (it can: walked again).
    regular_file: bool = attrs.field(default=False, init=False)

    def paths(self) -> Iterator[str]:
        """The image files, in walk order."""
        skip = None if self.skip is None else os.path.realpath(self.skip)
        for top, folders, files in os.walk(self.name):
            folders[:] = sorted(
                folder
                for folder in folders
                if not folder.startswith(".")
                and os.path.realpath(os.path.join(top, folder)) != skip
            )
            for file in sorted(files):
                if not file.startswith(".") and file.lower().endswith(IMAGE_SUFFIXES):
                    yield os.path.join(top, file)

    def records(self) -> Iterator[InputRecord]:
        """One record per image file, numbered from 1."""
        for number, path in enumerate(self.paths(), start=1):
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                shown = path.encode("utf-8", "replace").decode("utf-8")
                yield InputRecord(number, None, "the file name is not valid UTF-8", shown)
                continue
            yield InputRecord(number, path, None, path)

    def close(self) -> None:
        """Nothing to close."""


def open_directory(name: str, *, skip: Path | None = None) -> DirectorySource:
    """The directory input *name*, leaving out *skip*.

    Raises:
        UsageError: *name* cannot be listed.
    """
    try:
        os.scandir(name).close()
    except OSError as exc:
        raise UsageError(f"cannot read input directory {name!r}: {exc.strerror or exc}") from None
    return DirectorySource(name, skip)
