"""moto's S3 server as a test peer (TESTING.md §7.1) and client-side fault injection (§7.2).

``MotoS3`` runs ``moto.server.ThreadedMotoServer`` in-process on a kernel-chosen port of
127.0.0.1: the server binds the socket itself and reports the port, so there is no race
with other processes (rule 1.1) and nothing foreign can answer.

moto keeps its state in process-wide backends, so two servers in one process would share
buckets: the fixture resets the state on start and every bucket name is unique.

Use the ``moto_s3`` pytest fixture (one shared server per process, emptied before each
test), or ``with moto_s3_server() as s3:`` for a server of its own.
To make the fixture available everywhere, add to ``tests/conftest.py``::

    from tests.peers.s3 import moto_s3  # noqa: F401
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import boto3
import pytest
import requests
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from moto.server import ThreadedMotoServer

from migrator.sources.s3 import S3Settings, S3Source

# Dummy credentials: moto accepts anything; these must never be real ones.
ACCESS_KEY = "testing"
SECRET_KEY = "testing-secret-do-not-log"
REGION = "us-east-1"

# Variables through which real credentials or config could leak into a test (§7.1), plus
# the instance-metadata probe that makes a missing-credentials test hang for seconds.
_UNSET_VARS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
_SET_VARS = {
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextlib.contextmanager
def clean_aws_env() -> Iterator[None]:
    """Hide the caller's AWS environment for the duration of the block."""
    saved = {name: os.environ.get(name) for name in (*_UNSET_VARS, *_SET_VARS)}
    try:
        for name in _UNSET_VARS:
            os.environ.pop(name, None)
        os.environ.update(_SET_VARS)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class MotoS3:
    """A running moto S3 server with a client and helpers to fill it."""

    def __init__(self, server: ThreadedMotoServer, endpoint: str) -> None:
        self.server = server
        self.endpoint = endpoint
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}),
        )

    def reset(self) -> None:
        """Wipe every bucket and object (moto's state is process-wide)."""
        requests.post(f"{self.endpoint}/moto-api/reset", timeout=10).raise_for_status()

    def create_bucket(self, prefix: str = "bkt") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes) -> str:
        """Upload ``data``; returns the ETag without quotes."""
        resp = self.client.put_object(Bucket=bucket, Key=key, Body=data)
        return str(resp["ETag"]).strip('"')

    def put_many(self, bucket: str, items: Iterable[tuple[str, bytes]]) -> None:
        for key, data in items:
            self.put(bucket, key, data)

    def upload_file(self, bucket: str, key: str, path: str) -> None:
        self.client.upload_file(path, bucket, key)

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)

    def settings(self, **overrides: Any) -> S3Settings:
        """Settings pointing at this server with the dummy credentials."""
        values: dict[str, Any] = {
            "endpoint_url": self.endpoint,
            "region": REGION,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "max_attempts": 4,
            "connect_timeout": 5.0,
            "read_timeout": 10.0,
        }
        values.update(overrides)
        return S3Settings(**values)

    def source(self, uri: str, *, page_size: int | None = None, **overrides: Any) -> S3Source:
        return S3Source(uri, self.settings(**overrides), page_size=page_size)


def _start_server() -> tuple[ThreadedMotoServer, str]:
    # werkzeug logs one line per request; the tests' output is easier to read without.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


@contextlib.contextmanager
def moto_s3_server() -> Iterator[MotoS3]:
    """A server of its own, stopped on exit (stopping takes ~0.5 s: werkzeug's poll)."""
    with clean_aws_env():
        server, endpoint = _start_server()
        try:
            peer = MotoS3(server, endpoint)
            peer.reset()
            yield peer
        finally:
            server.stop()


_shared: tuple[ThreadedMotoServer, str] | None = None
_shared_lock = threading.Lock()


def _shared_server() -> tuple[ThreadedMotoServer, str]:
    """One server per test process, started on first use.

    Starting is instant but every stop costs 0.5 s, which made a per-test server spend
    most of the suite's time in teardown. The state is wiped before each test instead.
    A plain function rather than a session fixture so that importing ``moto_s3`` alone
    is enough to use it.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = _start_server()
            atexit.register(_shared[0].stop)
        return _shared


@pytest.fixture
def moto_s3() -> Iterator[MotoS3]:
    """An empty moto S3 server on 127.0.0.1, with the caller's AWS environment hidden."""
    server, endpoint = _shared_server()
    with clean_aws_env():
        peer = MotoS3(server, endpoint)
        peer.reset()
        yield peer


class _RawBody:
    """The minimal raw stream ``AWSResponse`` reads its content from."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def _error_xml(code: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>injected by the test</Message></Error>"
    ).encode()


class Injection:
    """What an ``inject_errors`` hook has done: ``attempts`` counts every attempt seen."""

    def __init__(self, errors: list[tuple[int, str]], forever: bool) -> None:
        self.errors = errors
        self.forever = forever
        self.attempts = 0
        self.injected = 0

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        n = self.attempts
        self.attempts += 1
        if n < len(self.errors) or (self.forever and self.errors):
            status, code = self.errors[min(n, len(self.errors) - 1)]
            self.injected += 1
            headers = {"Content-Type": "application/xml"}
            return AWSResponse(request.url, status, headers, _RawBody(_error_xml(code)))
        return None  # None: botocore sends the real request


def inject_errors(
    client: Any, operation: str, errors: Iterable[tuple[int, str]], *, forever: bool = False
) -> Injection:
    """Answer the next calls of ``operation`` (e.g. ``"GetObject"``) with fake S3 errors.

    ``errors`` is a sequence of (HTTP status, S3 error code); once it runs out the real
    request is sent again, unless ``forever`` is set, in which case the last error repeats.
    The hook runs before botocore sends each attempt, so botocore's own retries see the
    errors too (moto has no fault injection of its own, TESTING.md §7.2).
    """
    hook = Injection(list(errors), forever)
    # unique_id: registering the same operation twice must add a second hook, not replace.
    client.meta.events.register(f"before-send.s3.{operation}", hook, unique_id=f"inject-{id(hook)}")
    return hook
