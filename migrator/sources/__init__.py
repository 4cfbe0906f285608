"""Where files come from: local files and folders, S3 prefixes, manifests, DICOMweb services.

``open_source`` is the one place that turns what a user typed (or what a plan holds) into a
``Source``; `store`, the planner and the workers all go through it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from migrator.errors import ConfigError
from migrator.sources.base import Source, SourceItem
from migrator.sources.filesystem import FileSource

if TYPE_CHECKING:
    from migrator.settings import Settings
    from migrator.sources.windows import StudyQuery


def open_source(
    uri: str,
    settings: Settings | None = None,
    *,
    recursive: bool = True,
    query: StudyQuery | None = None,
) -> Source:
    """``s3://bucket/prefix`` (or one object), ``dicomweb+https://host/dicom-web`` (the
    studies ``query`` selects), or a local file or folder (walked into its sub-folders when
    ``recursive``). Raises ConfigError for an unusable S3 setup or DICOMweb URL."""
    from migrator.sources.dicomweb import DicomwebSource, is_dicomweb
    from migrator.sources.dimse import DimseSource, is_dimse

    if is_dimse(uri):
        if settings is None:
            raise ConfigError(f"{uri}: a dimse:// source needs the job's settings")
        if settings.source_rate_limit or settings.source_max_associations:
            from migrator.sources.protect import ProtectedDimseSource

            return ProtectedDimseSource(
                uri, settings, query=query, calling_ae=settings.source_calling_ae
            )
        return DimseSource(uri, settings, query=query, calling_ae=settings.source_calling_ae)
    if is_dicomweb(uri):
        return DicomwebSource(
            uri,
            query=query,
            credentials=(
                (settings.source_token_file, settings.source_basic_auth_file)
                if settings
                else (None, None)
            ),
            tls=settings.source_tls if settings else None,
            connect_timeout=settings.acse_timeout if settings else 30.0,
            read_timeout=settings.dimse_timeout if settings else 60.0,
        )
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
        #: DICOMweb and DIMSE services by root: one per service (a spool and connections)
        self._services: dict[str, Source] = {}
        # One for every local file: a FileSource fetches an item by its own URI.
        self._files = FileSource("/")

    def __call__(self, uri: str) -> Source:
        from migrator.sources.dicomweb import is_dicomweb, service_url
        from migrator.sources.dimse import is_dimse, source_root

        if is_dimse(uri):
            root = source_root(uri)
            if root not in self._services:
                self._services[root] = open_source(root, self._settings)
            return self._services[root]
        if is_dicomweb(uri):
            root = service_url(uri)
            if root not in self._services:
                self._services[root] = open_source(f"dicomweb+{root}", self._settings)
            return self._services[root]
        if not uri.startswith("s3://"):
            return self._files
        bucket = uri[5:].split("/", 1)[0]
        if bucket not in self._s3:
            self._s3[bucket] = open_source(f"s3://{bucket}/", self._settings)
        return self._s3[bucket]


def expect(pairs: Iterable[tuple[Source, SourceItem]]) -> None:
    """Tell each source that has ``expect`` (the old PACS: migrator/sources/dimse.py) the
    items about to be fetched from it, before the first fetch: it can then fetch them
    series by series instead of one by one."""
    by_source: dict[int, tuple[Source, list[SourceItem]]] = {}
    for source, item in pairs:
        if hasattr(source, "expect"):
            by_source.setdefault(id(source), (source, []))[1].append(item)
    for source, items in by_source.values():
        source.expect(items)  # type: ignore[attr-defined]
