"""Local files and folders. Listing uses ``os.scandir`` and never opens a file."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator

from migrator.errors import SourceError
from migrator.sources.base import Payload, SourceItem


class FileSource:
    """Files given one by one, or every regular file under a folder.

    Hidden files and folders (name starting with ".") are skipped when walking a folder:
    archives carry ``.DS_Store``, ``.snapshot`` and similar that are never DICOM.
    Symbolic links to files are followed; links to folders are not (no cycles, no file
    listed twice). Every other entry of a walked folder is listed too, so that the report
    accounts for it instead of dropping it unseen: a link to a folder (when recursive),
    a broken link, a named pipe, a socket or a device. Inspection then settles each with
    its reason (``migrator.dicomfile.inspect_file``), without ever opening a pipe.
    """

    def __init__(self, path: str, *, recursive: bool = False) -> None:
        self.path = os.path.abspath(path)
        self.recursive = recursive

    def iter_items(self) -> Iterator[SourceItem]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError as exc:
            if os.path.islink(self.path):
                # Listed, so that inspection reports it as the broken link it is.
                yield SourceItem(self.path, 0, "")
                return
            raise SourceError(f"{self.path}: no such file or directory") from exc
        except OSError as exc:
            raise SourceError(f"{self.path}: {exc.strerror or exc}") from exc
        if stat.S_ISDIR(st.st_mode):
            yield from self._walk(self.path)
        else:
            yield SourceItem(self.path, st.st_size, str(st.st_mtime_ns))

    def _walk(self, folder: str) -> Iterator[SourceItem]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            if folder != self.path:
                # A sub-folder: listed as one item (inspection says it cannot be listed),
                # and the walk goes on with its siblings.
                yield SourceItem(folder, 0, "")
                return
            raise SourceError(f"{folder}: cannot list: {exc.strerror or exc}") from exc
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_file():
                    st = entry.stat()
                    yield SourceItem(entry.path, st.st_size, str(st.st_mtime_ns))
                elif entry.is_dir(follow_symlinks=False):
                    if self.recursive:
                        subdirs.append(entry.path)
                elif self.recursive or not entry.is_dir():
                    # A link to a folder (listed when walking sub-folders), a broken link,
                    # a pipe, a socket or a device: listed with no size, refused with its
                    # reason at inspection.
                    yield SourceItem(entry.path, 0, "")
            except OSError:
                # Vanished or unreadable between listing and stat: still planned, so the
                # failure is reported when it is fetched instead of silently dropped.
                yield SourceItem(entry.path, 0, "")
        for sub in subdirs:
            yield from self._walk(sub)

    @contextlib.contextmanager
    def fetch(self, item: SourceItem) -> Iterator[Payload]:
        yield Payload(path=item.uri)


class MemorySource:
    """DICOM bytes held by the caller (library use)."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.name = name

    def iter_items(self) -> Iterator[SourceItem]:
        yield SourceItem(f"mem://{self.name}", len(self.data))

    @contextlib.contextmanager
    def fetch(self, item: SourceItem) -> Iterator[Payload]:
        yield Payload(data=self.data)
