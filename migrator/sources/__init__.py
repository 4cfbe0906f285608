"""Where files come from: local files and folders, S3 prefixes, manifests.

``open_source`` is the one place that turns what a user typed (or what a plan holds) into a
``Source``; `store`, the planner and the workers all go through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from migrator.sources.base import Source
from migrator.sources.filesystem import FileSource

if TYPE_CHECKING:
    from migrator.settings import Settings


def open_source(uri: str, settings: Settings | None = None, *, recursive: bool = True) -> Source:
    """``s3://bucket/prefix`` (or one object) or a local file or folder (walked into its
    sub-folders when ``recursive``). Raises ConfigError for an unusable S3 setup."""
    if uri.startswith("s3://"):
        from migrator.sources.s3 import S3Settings, S3Source

        s3 = S3Settings(
            endpoint_url=settings.s3_endpoint if settings else None,
            region=settings.s3_region if settings else None,
        )
        return S3Source(uri, s3)
    return FileSource(uri, recursive=recursive)


class SourceCache:
    """Planned URIs back to something to fetch, one S3 client per bucket (a worker sends
    thousands of files from the same few buckets)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._s3: dict[str, Source] = {}
        # One for every local file: a FileSource fetches an item by its own URI.
        self._files = FileSource("/")

    def __call__(self, uri: str) -> Source:
        if not uri.startswith("s3://"):
            return self._files
        bucket = uri[5:].split("/", 1)[0]
        if bucket not in self._s3:
            self._s3[bucket] = open_source(f"s3://{bucket}/", self._settings)
        return self._s3[bucket]
