"""boto3/botocore failures translated into the migrator's error tree (``map_error``).

boto3/botocore exceptions never leave the S3 source (:mod:`migrator.sources.s3`): they are
mapped into the migrator's error tree with a short message that names the object and the S3
error code only. S3's own error messages are left out on purpose: some
(SignatureDoesNotMatch) echo request details that users should not see in logs.
"""

from __future__ import annotations

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
from migrator.sources.s3.settings import S3Settings, parse_s3_uri, scrub

# Error codes that mean "the object is not there (any more)". HEAD answers carry no body,
# so botocore reports the bare HTTP status as the code.
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
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

# What a boto3 call can raise on purpose. Anything else is a bug and keeps its traceback.
BOTO_ERRORS = (ClientError, BotoCoreError)


def error_code(exc: ClientError) -> str:
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


def changed_message(uri: str) -> str:
    return f"{uri} changed since it was listed (size/ETag differ)"


def error_name(exc: BaseException) -> str:
    return type(exc).__name__


def map_error(exc: BaseException, uri: str, action: str, settings: S3Settings) -> MigratorError:
    """Translate a boto3/botocore failure into the migrator's tree, with a safe message."""
    if isinstance(exc, ClientError):
        code, status = error_code(exc), _status(exc)
        if code == "NoSuchBucket":
            bucket = parse_s3_uri(uri)[0]
            return SourceError(
                f"S3 bucket {bucket!r} does not exist (while trying to {action} {uri})"
            )
        if code in MISSING_CODES:
            return SourceError(f"{uri} vanished: the object no longer exists")
        if code in _CHANGED_CODES:
            return SourceError(changed_message(uri))
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
        return ConfigError(f"invalid S3 request for {uri}: {scrub(str(exc), settings)}")
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        where = settings.endpoint_url or "the S3 endpoint"
        return ConnectError(f"cannot connect to {where} to {action} {uri}")
    if isinstance(exc, _STREAM_ERRORS):
        return ConnectError(
            f"connection to S3 lost while trying to {action} {uri} ({error_name(exc)})"
        )
    # Other BotoCoreErrors (e.g. a proxy or checksum failure): worth another try later.
    return TransientError(f"S3 client error while trying to {action} {uri} ({error_name(exc)})")
