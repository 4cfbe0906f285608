"""Fetched files kept for the send that follows their header's reading.

Sources that cannot read a header without downloading the whole instance (WADO-RS, C-GET)
are planned without headers; the sender reads each header from the downloaded file, then
sends: a fetch keeps its file here until the next fetch of the same item takes it (and
deletes it when done), within ``MAX_FILES`` / ``MAX_BYTES`` (the oldest go first: a file
evicted is downloaded again, never lost). One spool folder per source, removed with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator

from migrator.sources.base import Payload

MAX_FILES = 512
MAX_BYTES = 1 << 30


class HeldFiles:
    def __init__(self, prefix: str) -> None:
        self._held: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._bytes = 0
        # `store` reads headers in threads while its sender fetches.
        self._lock = threading.Lock()
        self.spool = tempfile.mkdtemp(prefix=prefix)
        weakref.finalize(self, shutil.rmtree, self.spool, True)

    def new_path(self) -> str:
        fd, path = tempfile.mkstemp(dir=self.spool, suffix=".dcm")
        os.close(fd)
        return path

    @contextlib.contextmanager
    def fetch(self, key: str, download: Callable[[], tuple[str, int]]) -> Iterator[Payload]:
        """The item's file: the one held for ``key``, else ``download()`` (path, size)."""
        with self._lock:
            held = self._held.pop(key, None)
            if held is not None:
                self._bytes -= held[1]
        if held is not None:
            try:
                yield Payload(path=held[0])
            finally:
                unlink(held[0])
            return
        path, size = download()
        try:
            yield Payload(path=path)
        except BaseException:
            unlink(path)
            raise
        self._hold(key, path, size)

    def _hold(self, key: str, path: str, size: int) -> None:
        evicted = []
        with self._lock:
            replaced = self._held.pop(key, None)
            if replaced is not None:
                self._bytes -= replaced[1]
                evicted.append(replaced[0])
            self._held[key] = (path, size)
            self._bytes += size
            while len(self._held) > MAX_FILES or self._bytes > MAX_BYTES:
                _, (old, old_size) = self._held.popitem(last=False)
                self._bytes -= old_size
                evicted.append(old)
        for old in evicted:
            unlink(old)


def unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
