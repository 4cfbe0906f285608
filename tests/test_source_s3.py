"""S3Source against a real (in-process) moto S3 server, with client-side fault injection."""

from __future__ import annotations

import io
import os
import socket
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.awsrequest import AWSResponse

from migrator.errors import ConfigError, ConnectError, SourceError, TransientError
from migrator.sources.base import Payload, SourceItem
from migrator.sources.s3 import S3Settings, S3Source, parse_s3_uri
from tests.peers import s3 as s3_peer
from tests.peers.s3 import SECRET_KEY, MotoS3, inject_errors

# The fixture, until tests/conftest.py imports it for every module. A plain assignment rather
# than ``from ... import moto_s3``: ruff flags every test argument named like an import (F811).
moto_s3 = s3_peer.moto_s3

TOKEN = "session-token-do-not-log"


def _items(source: S3Source) -> list[SourceItem]:
    return list(source.iter_items())


def _keys(items: list[SourceItem]) -> list[str]:
    return [item.uri.split("/", 3)[3] for item in items]


def _assert_no_secret(text: str) -> None:
    assert SECRET_KEY not in text
    assert TOKEN not in text


# -- URI parsing and settings ------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/prefix", ("bucket", "prefix")),
        ("s3://bucket/a/b/c.dcm", ("bucket", "a/b/c.dcm")),
        ("s3://bucket/dir/", ("bucket", "dir/")),
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
        ("S3://my.bucket-1/x?y#z%20", ("my.bucket-1", "x?y#z%20")),
    ],
)
def test_parse_s3_uri(uri: str, expected: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "bucket/key",
        "s3:/bucket/key",
        "http://bucket/key",
        "s3://",
        "s3:///key",
        "s3://b/k",
        "s3://bad bucket/k",
        "s3://bu/ck/" + "k" * 1100,
    ],
)
def test_parse_s3_uri_rejects_bad_uris(uri: str) -> None:
    with pytest.raises(ConfigError):
        parse_s3_uri(uri)


def test_settings_repr_masks_secrets() -> None:
    settings = S3Settings(
        endpoint_url="http://127.0.0.1:9",
        access_key_id="AKIDEXAMPLE",
        secret_access_key=SECRET_KEY,
        session_token=TOKEN,
    )
    for text in (
        repr(settings),
        str(settings),
        f"{settings}",
        repr(S3Source("s3://bkt/x", settings)),
    ):
        _assert_no_secret(text)
        assert "AKIDEXAMPLE" in text  # the key id is not secret and helps debugging
        assert "'***'" in text
    assert "secret_access_key=None" in repr(S3Settings())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"access_key_id": "AKID"},
        {"secret_access_key": "s"},
        {"session_token": "t"},
        {"memory_threshold": -1},
        {"max_attempts": 0},
        {"read_timeout": 0},
        {"endpoint_url": "localhost:9000"},
    ],
)
def test_settings_reject_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        S3Settings(**kwargs)
    _assert_no_secret(str(info.value))


def test_path_style_and_retries_when_endpoint_given() -> None:
    config = S3Settings(endpoint_url="http://127.0.0.1:9", max_attempts=7).botocore_config()
    assert config.s3 == {"addressing_style": "path"}
    assert config.retries == {"total_max_attempts": 7, "mode": "standard"}
    assert S3Settings().botocore_config().s3 in (None, {})


# -- listing -----------------------------------------------------------------------------


def test_listing_spans_pages_each_key_once_in_order(moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    keys = [f"scans/{i:03d}.dcm" for i in range(13)]
    etags = {key: moto_s3.put(bucket, key, key.encode() * 3) for key in reversed(keys)}
    moto_s3.put(bucket, "scans/", b"")  # folder marker: skipped
    moto_s3.put(bucket, "other/x.dcm", b"x")  # outside the prefix

    source = moto_s3.source(f"s3://{bucket}/scans/", page_size=4)
    lists = inject_errors(source.client, "ListObjectsV2", [])  # counts calls only
    items = _items(source)

    assert _keys(items) == keys
    assert lists.attempts == 4  # 13 keys at 4 per page
    for item in items:
        key = _keys([item])[0]
        assert item.size == len(key.encode()) * 3
        assert item.version == etags[key]


def test_listing_is_lazy(moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    moto_s3.put_many(bucket, ((f"k{i:02d}", b"d") for i in range(10)))
    source = moto_s3.source(f"s3://{bucket}", page_size=3)
    lists = inject_errors(source.client, "ListObjectsV2", [])
    it = source.iter_items()
    assert lists.attempts == 0  # nothing requested before the first item is asked for
    first = next(it)
    assert _keys([first]) == ["k00"]
    assert lists.attempts == 1
    assert len(list(it)) == 9
    assert lists.attempts == 4


def test_prefix_without_slash_matches_like_s3(moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    moto_s3.put_many(bucket, [("scan/a", b"1"), ("scan1/b", b"2"), ("scal/c", b"3")])
    assert _keys(_items(moto_s3.source(f"s3://{bucket}/scan"))) == ["scan/a", "scan1/b"]
    assert _keys(_items(moto_s3.source(f"s3://{bucket}/scan/"))) == ["scan/a"]


def test_exact_key_yields_exactly_that_object(moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    etag = moto_s3.put(bucket, "p/one.dcm", b"12345")
    moto_s3.put(bucket, "p/one.dcm.bak", b"other")
    items = _items(moto_s3.source(f"s3://{bucket}/p/one.dcm"))
    assert items == [SourceItem(f"s3://{bucket}/p/one.dcm", 5, etag)]


def test_empty_prefix_and_empty_bucket_yield_nothing(moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    assert _items(moto_s3.source(f"s3://{bucket}")) == []
    moto_s3.put(bucket, "a/x", b"x")
    assert _items(moto_s3.source(f"s3://{bucket}/nothing-here/")) == []
    assert _items(moto_s3.source(f"s3://{bucket}/nothing")) == []


def test_missing_bucket_is_a_clear_source_error(moto_s3: MotoS3) -> None:
    with pytest.raises(SourceError, match="bucket 'no-such-bucket' does not exist"):
        _items(moto_s3.source("s3://no-such-bucket/x/"))
    with pytest.raises(SourceError, match="does not exist"):
        _items(moto_s3.source("s3://no-such-bucket/exact.dcm"))


def test_access_denied_on_listing(moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    source = moto_s3.source(f"s3://{bucket}/x/")
    inject_errors(source.client, "ListObjectsV2", [(403, "AccessDenied")])
    with pytest.raises(SourceError, match="access denied") as info:
        _items(source)
    _assert_no_secret(str(info.value))


def test_access_denied_on_exact_key_head(moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    moto_s3.put(bucket, "k.dcm", b"x")
    source = moto_s3.source(f"s3://{bucket}/k.dcm")
    # A HEAD answer has no body, so botocore reports the bare status "403" as the code.
    inject_errors(source.client, "HeadObject", [(403, "AccessDenied")])
    with pytest.raises(SourceError, match="access denied"):
        _items(source)


# -- fetching ----------------------------------------------------------------------------


def _only(source: S3Source) -> SourceItem:
    items = _items(source)
    assert len(items) == 1
    return items[0]


def test_fetch_small_object_into_memory(moto_s3: MotoS3, tmp_path: Any) -> None:
    bucket = moto_s3.create_bucket()
    data = os.urandom(1000)
    moto_s3.put(bucket, "small.dcm", data)
    source = moto_s3.source(f"s3://{bucket}/small.dcm", spool_dir=str(tmp_path))
    with source.fetch(_only(source)) as payload:
        assert payload == Payload(data=data)
    assert os.listdir(tmp_path) == []


def test_fetch_large_object_spools_to_disk_and_cleans_up(moto_s3: MotoS3, tmp_path: Any) -> None:
    bucket = moto_s3.create_bucket()
    data = os.urandom(2 * 1024 * 1024 + 12345)  # several 1 MiB chunks plus a tail
    moto_s3.put(bucket, "big.dcm", data)
    source = moto_s3.source(
        f"s3://{bucket}/big.dcm", spool_dir=str(tmp_path), memory_threshold=64 * 1024
    )
    with source.fetch(_only(source)) as payload:
        assert payload.data is None and payload.path is not None
        assert os.path.dirname(payload.path) == str(tmp_path)
        with open(payload.path, "rb") as f:
            assert f.read() == data
        path = payload.path
    assert not os.path.exists(path)
    assert os.listdir(tmp_path) == []


def test_spool_file_removed_when_the_block_raises(moto_s3: MotoS3, tmp_path: Any) -> None:
    bucket = moto_s3.create_bucket()
    moto_s3.put(bucket, "big.dcm", b"z" * 5000)
    source = moto_s3.source(f"s3://{bucket}/big.dcm", spool_dir=str(tmp_path), memory_threshold=10)
    with pytest.raises(RuntimeError), source.fetch(_only(source)) as payload:
        assert payload.path is not None and os.path.exists(payload.path)
        raise RuntimeError("sender failed")
    assert os.listdir(tmp_path) == []


def test_fetch_multipart_object(moto_s3: MotoS3, tmp_path: Any) -> None:
    # Multipart ETags ("<md5>-<parts>") are not an MD5 of the content; If-Match still works.
    bucket = moto_s3.create_bucket()
    data = os.urandom(6 * 1024 * 1024)
    moto_s3.client.upload_fileobj(
        io.BytesIO(data),
        bucket,
        "mp.dcm",
        Config=TransferConfig(
            multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024
        ),
    )
    source = moto_s3.source(
        f"s3://{bucket}/mp.dcm", spool_dir=str(tmp_path), memory_threshold=1024 * 1024
    )
    item = _only(source)
    assert item.version.endswith("-2")
    with source.fetch(item) as payload:
        assert payload.path is not None
        with open(payload.path, "rb") as f:
            assert f.read() == data
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("threshold", [1 << 20, 1], ids=["memory", "spool"])
def test_object_deleted_after_listing_vanished(
    moto_s3: MotoS3, tmp_path: Any, threshold: int
) -> None:
    bucket = moto_s3.create_bucket()
    moto_s3.put(bucket, "d/gone.dcm", b"abc" * 100)
    source = moto_s3.source(
        f"s3://{bucket}/d/", spool_dir=str(tmp_path), memory_threshold=threshold
    )
    item = _only(source)
    moto_s3.delete(bucket, "d/gone.dcm")
    with pytest.raises(SourceError, match="vanished") as info, source.fetch(item):
        pass
    assert item.uri in str(info.value)
    assert os.listdir(tmp_path) == []
    with pytest.raises(SourceError, match="vanished"):
        source.read_head(item, 10)


@pytest.mark.parametrize("new_data", [b"def" * 100, b"longer" * 100], ids=["same-size", "resized"])
def test_object_overwritten_after_listing_changed(
    moto_s3: MotoS3, tmp_path: Any, new_data: bytes
) -> None:
    bucket = moto_s3.create_bucket()
    moto_s3.put(bucket, "c.dcm", b"abc" * 100)
    source = moto_s3.source(f"s3://{bucket}/c.dcm", spool_dir=str(tmp_path), memory_threshold=10)
    item = _only(source)
    moto_s3.put(bucket, "c.dcm", new_data)
    expected = f"s3://{bucket}/c.dcm changed since it was listed (size/ETag differ)"
    with pytest.raises(SourceError) as info, source.fetch(item):
        pass
    assert str(info.value) == expected
    with pytest.raises(SourceError, match="changed since it was listed"):
        source.read_head(item, 10)
    assert os.listdir(tmp_path) == []


def test_change_detected_even_when_the_store_ignores_if_match(moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    moto_s3.put(bucket, "c.dcm", b"abc")
    source = moto_s3.source(f"s3://{bucket}/c.dcm")
    item = _only(source)
    moto_s3.put(bucket, "c.dcm", b"xyz")  # same size: only the ETag tells

    def drop_if_match(request: Any, **_: Any) -> None:
        assert request.headers.get("If-Match") == f'"{item.version}"'.encode()  # botocore: bytes
        del request.headers["If-Match"]

    source.client.meta.events.register("before-send.s3.GetObject", drop_if_match)
    with pytest.raises(SourceError, match="changed since it was listed"), source.fetch(item):
        pass


def test_fetch_without_version_checks_size_only(moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    moto_s3.put(bucket, "n.dcm", b"1234")
    source = moto_s3.source(f"s3://{bucket}/n.dcm")
    with source.fetch(SourceItem(f"s3://{bucket}/n.dcm", 4)) as payload:
        assert payload.data == b"1234"
    with (
        pytest.raises(SourceError, match="changed"),
        source.fetch(SourceItem(f"s3://{bucket}/n.dcm", 5)),
    ):
        pass


# -- faults ------------------------------------------------------------------------------


def test_two_slowdowns_are_retried_by_botocore(moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    moto_s3.put(bucket, "s.dcm", b"payload")
    source = moto_s3.source(f"s3://{bucket}/s.dcm", max_attempts=4)
    item = _only(source)
    gets = inject_errors(source.client, "GetObject", [(503, "SlowDown"), (503, "SlowDown")])
    with source.fetch(item) as payload:
        assert payload.data == b"payload"
    assert (gets.injected, gets.attempts) == (2, 3)


def test_persistent_500_becomes_transient_error(moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    moto_s3.put(bucket, "e.dcm", b"payload")
    source = moto_s3.source(f"s3://{bucket}/e.dcm", max_attempts=3)
    item = _only(source)
    gets = inject_errors(source.client, "GetObject", [(500, "InternalError")], forever=True)
    with pytest.raises(TransientError) as info, source.fetch(item):
        pass
    assert not isinstance(info.value, SourceError)
    assert gets.attempts == 3
    assert "InternalError" in str(info.value) and "3 attempt(s)" in str(info.value)
    assert info.value.__cause__ is not None  # the botocore error stays available for debugging
    _assert_no_secret(str(info.value))


def test_access_denied_on_get(moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    moto_s3.put(bucket, "a.dcm", b"x")
    source = moto_s3.source(f"s3://{bucket}/a.dcm")
    item = _only(source)
    gets = inject_errors(source.client, "GetObject", [(403, "AccessDenied")])
    with pytest.raises(SourceError, match=r"access denied to s3://.*/a\.dcm"), source.fetch(item):
        pass
    assert gets.attempts == 1  # 403 is not retried


def test_bad_credentials_are_a_config_error(moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    source = moto_s3.source(f"s3://{bucket}/", session_token=TOKEN)
    inject_errors(source.client, "ListObjectsV2", [(403, "SignatureDoesNotMatch")])
    with pytest.raises(ConfigError, match="rejected the credentials") as info:
        _items(source)
    _assert_no_secret(str(info.value))


def test_no_credentials_is_a_config_error(moto_s3: MotoS3) -> None:
    # The fixture hides the environment, shared files and instance metadata.
    source = S3Source("s3://bkt-none/x/", S3Settings(endpoint_url=moto_s3.endpoint))
    with pytest.raises(ConfigError, match="no usable AWS credentials"):
        _items(source)


def test_unreachable_endpoint_is_a_connect_error(moto_s3: MotoS3) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = moto_s3.settings(
        endpoint_url=f"http://127.0.0.1:{port}",
        max_attempts=1,
        connect_timeout=1.0,
        session_token=TOKEN,
    )
    source = S3Source("s3://bkt-x/x/", settings)
    with pytest.raises(ConnectError, match=f"cannot connect to http://127.0.0.1:{port}") as info:
        _items(source)
    _assert_no_secret(str(info.value))
    with pytest.raises(ConnectError), source.fetch(SourceItem("s3://bkt-x/k", 1, "e")):
        pass


class _ShortRaw:
    """A raw body that ends before its Content-Length: a connection cut mid-download."""

    def __init__(self, data: bytes) -> None:
        self.buf = io.BytesIO(data)

    def read(self, amt: int | None = None) -> bytes:
        return self.buf.read(amt)

    def stream(self, **_: Any) -> Any:
        yield self.buf.read()

    def close(self) -> None:
        pass


@pytest.mark.parametrize("threshold", [1 << 20, 1], ids=["memory", "spool"])
def test_truncated_download_is_transient_and_cleans_up(
    moto_s3: MotoS3, tmp_path: Any, threshold: int
) -> None:
    bucket = moto_s3.create_bucket()
    etag = moto_s3.put(bucket, "t.dcm", b"q" * 100)
    source = moto_s3.source(
        f"s3://{bucket}/t.dcm", spool_dir=str(tmp_path), memory_threshold=threshold
    )
    item = _only(source)

    def short_answer(request: Any, **_: Any) -> AWSResponse:
        headers = {"Content-Length": "100", "ETag": f'"{etag}"'}
        return AWSResponse(request.url, 200, headers, _ShortRaw(b"q" * 40))

    source.client.meta.events.register("before-send.s3.GetObject", short_answer)
    with pytest.raises(TransientError, match="download"), source.fetch(item):
        pass
    assert os.listdir(tmp_path) == []


def test_full_disk_while_spooling(moto_s3: MotoS3, tmp_path: Any, monkeypatch: Any) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    bucket = moto_s3.create_bucket()
    moto_s3.put(bucket, "f.dcm", os.urandom(3 * 1024 * 1024))
    source = moto_s3.source(f"s3://{bucket}/f.dcm", spool_dir=str(tmp_path), memory_threshold=1)
    item = _only(source)
    spool = tmp_path / "migrator-s3-fake.spool"

    def open_full_disk() -> tuple[Any, str]:
        # Every write to /dev/full fails with ENOSPC, exactly like a full spool volume.
        spool.write_bytes(b"")
        return open("/dev/full", "wb"), str(spool)

    monkeypatch.setattr(source, "_open_spool", open_full_disk)
    with pytest.raises(TransientError, match="no space left on device"), source.fetch(item):
        pass
    assert not spool.exists()


# -- read_head ---------------------------------------------------------------------------


def test_read_head_uses_a_ranged_get(moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    data = bytes(range(256)) * 4
    moto_s3.put(bucket, "h.dcm", data)
    moto_s3.put(bucket, "empty.dcm", b"")
    source = moto_s3.source(f"s3://{bucket}/")
    items = {_keys([i])[0]: i for i in _items(source)}
    ranges: list[bytes] = []
    source.client.meta.events.register(
        "before-send.s3.GetObject", lambda request, **_: ranges.append(request.headers["Range"])
    )
    assert source.read_head(items["h.dcm"], 132) == data[:132]
    assert ranges[-1] == b"bytes=0-131"  # HTTP ranges are inclusive
    assert source.read_head(items["h.dcm"], 5000) == data  # longer than the object
    assert source.read_head(items["empty.dcm"], 10) == b""
    assert source.read_head(items["h.dcm"], 0) == b""


def test_standalone_server_hides_and_restores_the_aws_environment(monkeypatch: Any) -> None:
    monkeypatch.setenv("AWS_PROFILE", "someone-real")
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    with s3_peer.moto_s3_server() as peer:
        assert "AWS_PROFILE" not in os.environ and "AWS_SESSION_TOKEN" not in os.environ
        bucket = peer.create_bucket()
        peer.put(bucket, "x/1.dcm", b"1")
        assert _keys(_items(peer.source(f"s3://{bucket}/x/"))) == ["x/1.dcm"]
    assert os.environ["AWS_PROFILE"] == "someone-real"
    assert os.environ["AWS_SESSION_TOKEN"] == TOKEN
