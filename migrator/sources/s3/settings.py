"""Where the objects are and how to reach the store: ``s3://`` URIs and ``S3Settings``.

``S3Settings`` makes the boto3 client (retries, timeouts, path-style addressing for
S3-compatible stores) and never shows the secret key or session token, not even in its repr.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError

from migrator.errors import ConfigError

MiB = 1024 * 1024

# Bucket names: AWS rules today are 3-63 lowercase characters, but legacy us-east-1 buckets
# and several S3-compatible stores allow upper case and underscores, so only reject what
# can never be a bucket name (empty, slashes, spaces, other punctuation).
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")


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


def s3_uri(bucket: str, key: str) -> str:
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
            raise ConfigError(f"cannot set up the S3 client: {scrub(str(exc), self)}") from exc


def scrub(text: str, settings: S3Settings) -> str:
    """Remove the secret and token from a message, should a library ever echo them."""
    for secret in (settings.secret_access_key, settings.session_token):
        if secret:
            text = text.replace(secret, "***")
    return text
