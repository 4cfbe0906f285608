"""Objects in S3 or an S3-compatible store (SeaweedFS, MinIO, Ceph RGW, moto).

Listing uses the ListObjectsV2 paginator and yields items page by page, so a prefix with
millions of keys never sits in memory. ``fetch`` downloads one object at a time: small
objects into memory, larger ones into a spool file that is always deleted afterwards.

Every object is pinned to the ETag and size seen at listing time. The GET carries
``If-Match`` (S3 and moto answer 412 when the object was overwritten), and the ETag and
length of the answer are checked again for stores that ignore the header. A changed or
vanished object is a ``SourceError``: the file that was planned is not the one we could send.

boto3/botocore exceptions never leave this module: they are mapped into the migrator's
error tree with a short message that names the object and the S3 error code only. S3's
own error messages are left out on purpose: some (SignatureDoesNotMatch) echo request
details that users should not see in logs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from migrator.errors import (
    ConfigError,
    ConnectError,
    MigratorError,
    SourceError,
    TransientError,
)
from migrator.sources.base import Payload, SourceItem

__all__ = ["S3Settings", "S3Source", "parse_s3_uri"]

MiB = 1024 * 1024

# Bucket names: AWS rules today are 3-63 lowercase characters, but legacy us-east-1 buckets
# and several S3-compatible stores allow upper case and underscores, so only reject what
# can never be a bucket name (empty, slashes, spaces, other punctuation).
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")

# Error codes that mean "the object is not there (any more)". HEAD answers carry no body,
# so botocore reports the bare HTTP status as the code.
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_CHANGED_CODES = frozenset({"PreconditionFailed", "412"})
_DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled"})
# Bad or missing credentials will not fix themselves by retrying: a configuration problem.
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "InvalidSecurity"}
)
# Temporary credentials (STS) that ran out: a refreshed chain may succeed on retry.
_EXPIRED_CODES = frozenset({"ExpiredToken", "TokenRefreshRequired", "RequestExpired"})
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
    }
)

# Low-level failures while reading a response body. botocore retries failed requests, but
# not a body that breaks half-way through (nor a body checksum mismatch, which botocore
# checks when the object has one): the caller's retry (TransientError) covers those.
_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    IncompleteReadError,
    ResponseStreamingError,
    ReadTimeoutError,
    ConnectionClosedError,
)

_CHUNK = 1 * MiB

# A full spool folder, said the same way in every reason (tests and users grep for it).
_FULL_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}

# What a boto3 call can raise on purpose. Anything else is a bug and keeps its traceback.
_BOTO_ERRORS = (ClientError, BotoCoreError)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key-or-prefix`` into ``(bucket, key_or_prefix)``.

    The key part is kept verbatim (no URL decoding): S3 keys may contain any character,
    including ``%``, ``?`` and ``#``. ``s3://bucket`` and ``s3://bucket/`` give an empty
    prefix (the whole bucket).
    """
    if not isinstance(uri, str) or not uri:
        raise ConfigError("S3 URI is empty; expected s3://bucket/prefix")
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() != "s3":
        raise ConfigError(f"not an S3 URI: {uri!r}; expected s3://bucket/prefix")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ConfigError(f"S3 URI has no bucket name: {uri!r}; expected s3://bucket/prefix")
    if not _BUCKET_RE.match(bucket):
        raise ConfigError(
            f"invalid S3 bucket name {bucket!r} in {uri!r}: use 3-255 letters, digits, "
            "'.', '-' or '_'"
        )
    if len(key.encode("utf-8")) > 1024:
        raise ConfigError(f"S3 key in {uri[:80]!r}... is longer than S3's 1024-byte limit")
    return bucket, key


def _s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def _mask(value: str | None) -> str:
    return "None" if value is None else "'***'"


@dataclass(frozen=True, slots=True)
class S3Settings:
    """How to reach the store. Any field left ``None`` falls back to boto3's defaults.

    Credentials left unset come from boto3's standard chain (environment, shared config
    and credentials files, container or instance role). ``memory_threshold``: objects
    strictly smaller than this are fetched into memory, the others spooled to a temporary
    file in ``spool_dir`` (``$TMPDIR``, else the system temporary folder, when ``None``).
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    spool_dir: str | None = None
    memory_threshold: int = 8 * MiB
    max_attempts: int = 5  # every try counts: 5 = the first request + 4 retries
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_pool_connections: int = 10

    def __post_init__(self) -> None:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ConfigError(
                "S3 credentials are incomplete: give both the access key id and the secret "
                "access key, or neither (to use the standard AWS credential chain)"
            )
        if self.session_token is not None and self.access_key_id is None:
            raise ConfigError("an S3 session token needs an access key id and secret key")
        if self.memory_threshold < 0:
            raise ConfigError("S3 memory_threshold must be >= 0 bytes")
        if self.max_attempts < 1:
            raise ConfigError("S3 max_attempts must be >= 1")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ConfigError("S3 connect and read timeouts must be > 0 seconds")
        if self.max_pool_connections < 1:
            raise ConfigError("S3 max_pool_connections must be >= 1")
        if self.endpoint_url is not None and not re.match(r"^https?://[^/\s]+", self.endpoint_url):
            raise ConfigError(
                f"invalid S3 endpoint URL {self.endpoint_url!r}: expected http(s)://host[:port]"
            )

    def __repr__(self) -> str:
        # Hand-written so the secret key and session token can never reach a log line,
        # even through an f-string or a traceback's locals.
        return (
            f"S3Settings(endpoint_url={self.endpoint_url!r}, region={self.region!r}, "
            f"access_key_id={self.access_key_id!r}, "
            f"secret_access_key={_mask(self.secret_access_key)}, "
            f"session_token={_mask(self.session_token)}, spool_dir={self.spool_dir!r}, "
            f"memory_threshold={self.memory_threshold}, max_attempts={self.max_attempts}, "
            f"connect_timeout={self.connect_timeout}, read_timeout={self.read_timeout}, "
            f"max_pool_connections={self.max_pool_connections})"
        )

    __str__ = __repr__

    def botocore_config(self) -> Config:
        s3_options: dict[str, Any] = {}
        if self.endpoint_url is not None:
            # S3-compatible stores rarely have wildcard DNS for virtual-hosted buckets.
            s3_options["addressing_style"] = "path"
        return Config(
            # botocore's "max_attempts" counts retries only (max_attempts=3 makes 4 requests,
            # checked against moto); "total_max_attempts" counts every request, which is
            # what our setting means. "standard" mode retries 500/502/503/504, throttling
            # codes (SlowDown) and connection errors with jittered exponential backoff.
            retries={"total_max_attempts": self.max_attempts, "mode": "standard"},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_pool_connections=self.max_pool_connections,
            s3=s3_options,
        )

    def make_client(self) -> Any:
        """A boto3 S3 client for these settings (own session: boto3's default is not
        thread-safe to create clients from)."""
        region = self.region
        if region is None and self.endpoint_url is not None:
            # Most S3-compatible stores ignore the region but SigV4 needs one to sign.
            region = "us-east-1"
        try:
            session = boto3.session.Session(
                aws_access_key_id=self.access_key_id,
                aws_secret_access_key=self.secret_access_key,
                aws_session_token=self.session_token,
                region_name=region,
            )
            return session.client(
                "s3", endpoint_url=self.endpoint_url, config=self.botocore_config()
            )
        except (ValueError, BotoCoreError) as exc:
            raise ConfigError(f"cannot set up the S3 client: {_scrub(str(exc), self)}") from exc


def _scrub(text: str, settings: S3Settings) -> str:
    """Remove the secret and token from a message, should a library ever echo them."""
    for secret in (settings.secret_access_key, settings.session_token):
        if secret:
            text = text.replace(secret, "***")
    return text


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
        self.uri = _s3_uri(self.bucket, self.key)
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
        uri = _s3_uri(self.bucket, key)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            # 404: not an object, so the key is a prefix. HEAD cannot tell a missing
            # bucket from a missing key (no body); the listing reports NoSuchBucket.
            if _code(exc) in _MISSING_CODES:
                return None
            raise self._error(exc, uri, "check") from exc
        except _BOTO_ERRORS as exc:
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
            except _BOTO_ERRORS as exc:
                raise self._error(exc, self.uri, "list") from exc
            for obj in page.get("Contents", ()):
                key: str = obj["Key"]
                size = int(obj.get("Size", 0))
                if key.endswith("/") and size == 0:
                    continue
                yield SourceItem(_s3_uri(self.bucket, key), size, _etag(obj.get("ETag")))

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
        except _BOTO_ERRORS as exc:
            raise TransientError(f"{item.uri}: download interrupted ({_short(exc)})") from exc
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
        except _BOTO_ERRORS as exc:
            raise self._error(exc, item.uri, "read") from exc
        # Second line of defence for stores that ignore If-Match: compare what came back.
        etag = _etag(resp.get("ETag"))
        total = _total_size(resp, ranged=range_header is not None)
        if (item.version and etag and etag != item.version) or (
            total is not None and total != item.size
        ):
            resp["Body"].close()
            raise SourceError(_changed_message(item.uri))
        return resp

    def _read_all(self, body: Any, item: SourceItem) -> bytes:
        try:
            data: bytes = body.read()
        except _BOTO_ERRORS as exc:
            raise TransientError(f"{item.uri}: download interrupted ({_short(exc)})") from exc
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
                except _BOTO_ERRORS as exc:
                    raise TransientError(
                        f"{item.uri}: download interrupted after {written} bytes ({_short(exc)})"
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
        return _map_error(exc, uri, action, self.settings)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) or str(
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


def _status(exc: ClientError) -> int:
    try:
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    except (TypeError, ValueError):
        return 0


def _attempts(exc: ClientError) -> int:
    # RetryAttempts counts retries; users think in attempts.
    retries = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
    return int(retries or 0) + 1


def _changed_message(uri: str) -> str:
    return f"{uri} changed since it was listed (size/ETag differ)"


def _short(exc: BaseException) -> str:
    return type(exc).__name__


def _map_error(exc: BaseException, uri: str, action: str, settings: S3Settings) -> MigratorError:
    """Translate a boto3/botocore failure into the migrator's tree, with a safe message."""
    if isinstance(exc, ClientError):
        code, status = _code(exc), _status(exc)
        if code == "NoSuchBucket":
            bucket = parse_s3_uri(uri)[0]
            return SourceError(
                f"S3 bucket {bucket!r} does not exist (while trying to {action} {uri})"
            )
        if code in _MISSING_CODES:
            return SourceError(f"{uri} vanished: the object no longer exists")
        if code in _CHANGED_CODES:
            return SourceError(_changed_message(uri))
        if code in _CREDENTIAL_CODES:
            return ConfigError(
                f"S3 rejected the credentials ({code}) while trying to {action} {uri}: check "
                "the access key id and secret access key"
            )
        if code in _EXPIRED_CODES:
            return TransientError(f"S3 credentials expired ({code}) while trying to {action} {uri}")
        if code in _DENIED_CODES:
            return SourceError(
                f"access denied to {uri} (cannot {action}): the credentials in use lack "
                "permission (s3:GetObject / s3:ListBucket) or a bucket policy blocks them"
            )
        if code == "InvalidObjectState":
            return SourceError(
                f"{uri} is archived (e.g. Glacier storage class) and must be restored before "
                "it can be read"
            )
        if code in _TRANSIENT_CODES or status >= 500:
            return TransientError(
                f"S3 is unavailable: {code or status} (HTTP {status}) while trying to {action} "
                f"{uri}, after {_attempts(exc)} attempt(s)"
            )
        return SourceError(f"S3 error {code} (HTTP {status}) while trying to {action} {uri}")
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return ConfigError(
            "no usable AWS credentials found: set an access key id and secret access key, "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an IAM role"
        )
    if isinstance(exc, NoRegionError):
        return ConfigError("no AWS region configured: set a region or AWS_DEFAULT_REGION")
    if isinstance(exc, ParamValidationError):
        return ConfigError(f"invalid S3 request for {uri}: {_scrub(str(exc), settings)}")
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        where = settings.endpoint_url or "the S3 endpoint"
        return ConnectError(f"cannot connect to {where} to {action} {uri}")
    if isinstance(exc, _STREAM_ERRORS):
        return ConnectError(f"connection to S3 lost while trying to {action} {uri} ({_short(exc)})")
    # Other BotoCoreErrors (e.g. a proxy or checksum failure): worth another try later.
    return TransientError(f"S3 client error while trying to {action} {uri} ({_short(exc)})")


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
