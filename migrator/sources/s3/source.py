"""``S3Source``: the objects under an ``s3://`` prefix, listed and fetched.

Listing uses the ListObjectsV2 paginator and yields items page by page, so a prefix with
millions of keys never sits in memory. ``fetch`` downloads one object at a time: small
objects into memory, larger ones into a spool file that is always deleted afterwards.

Every object is pinned to the ETag and size seen at listing time. The GET carries
``If-Match`` (S3 and moto answer 412 when the object was overwritten), and the ETag and
length of the answer are checked again for stores that ignore the header. A changed or
vanished object is a ``SourceError``: the file that was planned is not the one we could send.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from botocore.exceptions import ClientError

from migrator.errors import ConfigError, MigratorError, SourceError, TransientError
from migrator.sources.base import Payload, SourceItem
from migrator.sources.s3.boto_errors import (
    BOTO_ERRORS,
    MISSING_CODES,
    changed_message,
    error_code,
    error_name,
    map_error,
)
from migrator.sources.s3.settings import MiB, S3Settings, parse_s3_uri, s3_uri

_CHUNK = 1 * MiB

# A full spool folder, said the same way in every reason (tests and users grep for it).
_FULL_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


class S3Source:
    """Every object under ``s3://bucket/prefix``, or exactly one object.

    ``s3://bucket/key`` naming an existing object yields that object only; otherwise the
    key is a prefix, matched like S3 does (``s3://b/scan`` matches ``scan1/x.dcm`` too;
    end it with ``/`` to stay inside one folder). Folder markers (keys ending in ``/``
    with size 0, created by consoles and some sync tools) are skipped.

    ``page_size`` sets the ListObjectsV2 ``MaxKeys`` (S3 caps it at 1000); tests lower it
    to cover pagination.
    """

    def __init__(
        self,
        uri: str,
        settings: S3Settings | None = None,
        *,
        page_size: int | None = None,
        client: Any = None,
    ) -> None:
        self.bucket, self.key = parse_s3_uri(uri)
        self.uri = s3_uri(self.bucket, self.key)
        self.settings = settings if settings is not None else S3Settings()
        if page_size is not None and not 1 <= page_size <= 1000:
            raise ConfigError("S3 page_size must be between 1 and 1000")
        self.page_size = page_size
        # ``client`` lets callers share one (thread-safe) client between sources.
        self.client: Any = client if client is not None else self.settings.make_client()

    def __repr__(self) -> str:
        return f"S3Source({self.uri!r}, {self.settings!r})"

    # -- listing ---------------------------------------------------------------------------

    def iter_items(self) -> Iterator[SourceItem]:
        if self.key and not self.key.endswith("/"):
            single = self._head_if_exists(self.key)
            if single is not None:
                yield single
                return
        yield from self._list(self.key)

    def _head_if_exists(self, key: str) -> SourceItem | None:
        uri = s3_uri(self.bucket, key)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            # 404: not an object, so the key is a prefix. HEAD cannot tell a missing
            # bucket from a missing key (no body); the listing reports NoSuchBucket.
            if error_code(exc) in MISSING_CODES:
                return None
            raise self._error(exc, uri, "check") from exc
        except BOTO_ERRORS as exc:
            raise self._error(exc, uri, "check") from exc
        return SourceItem(uri, int(head["ContentLength"]), _etag(head.get("ETag")))

    def _list(self, prefix: str) -> Iterator[SourceItem]:
        paginator = self.client.get_paginator("list_objects_v2")
        pagination: dict[str, int] = {}
        if self.page_size is not None:
            pagination["PageSize"] = self.page_size
        pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix, PaginationConfig=pagination)
        # Pages are requested one at a time as the caller consumes items, so memory stays
        # at one page (<= 1000 keys) whatever the size of the prefix.
        page_iter = iter(pages)
        while True:
            try:
                page = next(page_iter)
            except StopIteration:
                return
            except BOTO_ERRORS as exc:
                raise self._error(exc, self.uri, "list") from exc
            for obj in page.get("Contents", ()):
                key: str = obj["Key"]
                size = int(obj.get("Size", 0))
                if key.endswith("/") and size == 0:
                    continue
                yield SourceItem(s3_uri(self.bucket, key), size, _etag(obj.get("ETag")))

    # -- fetching --------------------------------------------------------------------------

    @contextlib.contextmanager
    def fetch(self, item: SourceItem) -> Iterator[Payload]:
        bucket, key = self._locate(item)
        want_memory = item.size < self.settings.memory_threshold
        resp = self._get(item, bucket, key)
        body = resp["Body"]
        spool_path: str | None = None
        try:
            if want_memory:
                data = self._read_all(body, item)
                payload = Payload(data=data)
            else:
                spool_path = self._spool(body, item)
                payload = Payload(path=spool_path)
        finally:
            body.close()
        try:
            yield payload
        finally:
            if spool_path is not None:
                _unlink_quietly(spool_path)

    def read_head(self, item: SourceItem, nbytes: int) -> bytes:
        """The first ``nbytes`` of the object (fewer when it is shorter), by a ranged GET.

        Used for header-only inspection: the rest of the object is never transferred.
        """
        if nbytes <= 0 or item.size == 0:
            # A range on an empty object is 416 InvalidRange; there is nothing to read.
            return b""
        bucket, key = self._locate(item)
        resp = self._get(item, bucket, key, range_header=f"bytes=0-{nbytes - 1}")
        body = resp["Body"]
        try:
            data: bytes = body.read()
        except BOTO_ERRORS as exc:
            raise TransientError(f"{item.uri}: download interrupted ({error_name(exc)})") from exc
        finally:
            body.close()
        # A store that ignores Range sends the whole object: keep only what was asked.
        return data[:nbytes]

    def _locate(self, item: SourceItem) -> tuple[str, str]:
        try:
            return parse_s3_uri(item.uri)
        except ConfigError as exc:
            raise SourceError(f"{item.uri}: not an S3 object URI") from exc

    def _get(
        self, item: SourceItem, bucket: str, key: str, *, range_header: str | None = None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if item.version:
            kwargs["IfMatch"] = f'"{item.version}"'
        if range_header is not None:
            kwargs["Range"] = range_header
        try:
            resp: dict[str, Any] = self.client.get_object(**kwargs)
        except BOTO_ERRORS as exc:
            raise self._error(exc, item.uri, "read") from exc
        # Second line of defence for stores that ignore If-Match: compare what came back.
        etag = _etag(resp.get("ETag"))
        total = _total_size(resp, ranged=range_header is not None)
        if (item.version and etag and etag != item.version) or (
            total is not None and total != item.size
        ):
            resp["Body"].close()
            raise SourceError(changed_message(item.uri))
        return resp

    def _read_all(self, body: Any, item: SourceItem) -> bytes:
        try:
            data: bytes = body.read()
        except BOTO_ERRORS as exc:
            raise TransientError(f"{item.uri}: download interrupted ({error_name(exc)})") from exc
        if len(data) != item.size:
            raise TransientError(
                f"{item.uri}: download incomplete ({len(data)} of {item.size} bytes)"
            )
        return data

    def _open_spool(self) -> tuple[IO[bytes], str]:
        """A new, private spool file (mode 0600 by mkstemp) and its path."""
        folder = self._spool_folder()
        try:
            fd, path = tempfile.mkstemp(prefix="migrator-s3-", suffix=".spool", dir=folder)
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                # Out of inodes (blocks run out at the first write, in _spool).
                raise TransientError(
                    f"spool folder {folder} is full ({_FULL_ERRNOS[exc.errno]}): cannot "
                    f"create a spool file; {self._spool_hint()}"
                ) from exc
            raise ConfigError(
                f"cannot create a spool file in {folder}: {exc.strerror or exc}"
            ) from exc
        return os.fdopen(fd, "wb"), path

    def _spool(self, body: Any, item: SourceItem) -> str:
        out, path = self._open_spool()
        written = 0
        try:
            with out:
                try:
                    for chunk in body.iter_chunks(_CHUNK):
                        out.write(chunk)
                        written += len(chunk)
                except BOTO_ERRORS as exc:
                    raise TransientError(
                        f"{item.uri}: download interrupted after {written} bytes "
                        f"({error_name(exc)})"
                    ) from exc
            if written != item.size:
                raise TransientError(
                    f"{item.uri}: download incomplete ({written} of {item.size} bytes)"
                )
        except OSError as exc:
            _unlink_quietly(path)
            folder = os.path.dirname(path)
            if exc.errno in _FULL_ERRNOS:
                # Transient: spool files of other fetches are deleted as they finish.
                raise TransientError(
                    f"{item.uri}: spool folder {folder} is full ({_FULL_ERRNOS[exc.errno]}) "
                    f"after {written} of {item.size} bytes; {self._spool_hint()}"
                ) from exc
            raise TransientError(
                f"{item.uri}: cannot write spool file in {folder}: {exc.strerror or exc}"
            ) from exc
        except BaseException:
            _unlink_quietly(path)
            raise
        return path

    def _spool_folder(self) -> str:
        """``spool_dir``, else ``TMPDIR`` as given, else the system's temporary folder.

        Not ``tempfile.gettempdir()`` alone: it probes TMPDIR once per process and, if that
        folder is full at that moment, silently settles on /tmp (often the small root disk)
        for the rest of the process's life: a worker started while its spool disk was full
        would spool elsewhere for ever, and a full spool folder would go unreported.
        """
        folder = self.settings.spool_dir or os.environ.get("TMPDIR") or tempfile.gettempdir()
        return os.path.abspath(folder)

    def _spool_hint(self) -> str:
        """What a user can do about a full spool folder; without ``spool_dir`` (the CLI),
        the folder is the temporary one, chosen with ``TMPDIR``."""
        if self.settings.spool_dir:
            return "free space or choose another spool folder"
        return "free space or set TMPDIR to a folder with more room"

    # -- errors ----------------------------------------------------------------------------

    def _error(self, exc: BaseException, uri: str, action: str) -> MigratorError:
        return map_error(exc, uri, action, self.settings)


def _etag(value: object) -> str:
    # S3 quotes ETags; W/ weak prefixes come from some proxies/S3-compatible stores.
    text = str(value or "")
    if text.startswith("W/"):
        text = text[2:]
    return text.strip('"')


def _total_size(resp: dict[str, Any], *, ranged: bool) -> int | None:
    """The object's full size from a GET answer, or None when it cannot be told."""
    if ranged:
        # "bytes 0-99/1234": the total is after the slash ("*" when unknown).
        content_range = str(resp.get("ContentRange") or "")
        total = content_range.rpartition("/")[2]
        if total.isdigit():
            return int(total)
        if not content_range and "ContentLength" in resp:
            # 200 to a ranged GET (Range ignored): the whole object was sent.
            return int(resp["ContentLength"])
        return None
    if "ContentLength" in resp:
        return int(resp["ContentLength"])
    return None


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
