"""The source seam: list items cheaply, then fetch one at a time for sending.

Sources never read whole files while listing. ``fetch`` hands the sender a local path
(streamed from disk without loading it) or bytes already in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One file to migrate. ``version`` is the mtime (ns) for files, the ETag for S3."""

    uri: str
    size: int
    version: str = ""


@dataclass(frozen=True, slots=True)
class Payload:
    """A fetched item: exactly one of ``path`` (a local file) or ``data`` is set.

    A coerced file (migrator/coerce) is *spliced*: its dataset is ``head`` (the rewritten
    elements) followed by the item's bytes from ``resume`` to the end, which are streamed
    as stored (the File Meta, before the dataset, is unchanged)."""

    path: str | None = None
    data: bytes | None = None
    head: bytes | None = None
    resume: int = 0


class Source(Protocol):
    def iter_items(self) -> Iterator[SourceItem]:
        """Yield the items, in listing order, without reading their contents."""
        ...

    def fetch(self, item: SourceItem) -> contextlib.AbstractContextManager[Payload]:
        """Make the item's bytes available locally for the duration of the block.

        Raises ``SourceError`` when the item vanished, changed since it was listed, or
        cannot be read.
        """
        ...
