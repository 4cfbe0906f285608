"""The WADO-RS answer's one part, streamed to a file: delimiters split across reads,
preambles, truncated answers and answers with a second part (migrator/dicomweb/wado.py)."""

from __future__ import annotations

import io

import pytest

from migrator.dicomweb.wado import boundary_of, save_single_part
from migrator.errors import SourceError

BODY = bytes(range(256)) * 40 + b"\r\n--notquite\r\n" + b"\r\n-" * 50


def _answer(body: bytes, *, preamble: bytes = b"", epilogue: bytes = b"\r\n") -> bytes:
    return (
        preamble
        + b"--XyZ\r\nContent-Type: application/dicom\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
        + b"\r\n--XyZ--"
        + epilogue
    )


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, 4096, 1 << 20])
def test_the_part_is_written_whole_whatever_the_reads(size: int) -> None:
    out = io.BytesIO()
    n = save_single_part(_chunks(_answer(BODY, preamble=b"pre\r\n"), size), "XyZ", out, "x")
    assert out.getvalue() == BODY and n == len(BODY)


def test_an_answer_cut_in_the_middle_of_the_instance_is_an_error_naming_it() -> None:
    data = _answer(BODY)[:-200]
    with pytest.raises(SourceError, match=r"item-7: .*ended in the middle of the instance"):
        save_single_part(_chunks(data, 100), "XyZ", io.BytesIO(), "item-7")


def test_a_second_part_for_one_instance_url_is_an_error() -> None:
    two = _answer(BODY).replace(
        b"\r\n--XyZ--", b"\r\n--XyZ\r\nContent-Type: application/dicom\r\n\r\nmore\r\n--XyZ--"
    )
    with pytest.raises(SourceError, match="more than one instance"):
        save_single_part(_chunks(two, 333), "XyZ", io.BytesIO(), "x")


def test_an_answer_without_the_boundary_is_an_error() -> None:
    with pytest.raises(SourceError, match="holds no instance"):
        save_single_part([b"<html>not found</html>"], "XyZ", io.BytesIO(), "x")


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ('multipart/related; type="application/dicom"; boundary=abc', "abc"),
        ('Multipart/Related; boundary="a b:c"; type="application/dicom"', "a b:c"),
        ("application/dicom", None),
        ("multipart/related; type=application/dicom", None),
    ],
)
def test_the_boundary_is_read_from_the_content_type(
    content_type: str, boundary: str | None
) -> None:
    assert boundary_of(content_type) == boundary
