"""Our DICOM upper layer against pynetdicom's acceptor: the protocol interoperates."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from migrator.dicomfile import inspect_file
from migrator.dul.association import Association, AssociationLost, FileSlice, Timeouts
from migrator.dul.pdu import ProposedContext
from migrator.errors import AssociationRejected, ConnectError, SourceError
from migrator.netutil import free_port, patch_pynetdicom_nodelay
from tests.peers.tcp_proxy import TcpProxy

CT = "1.2.840.10008.5.1.4.1.1.2"


@contextmanager
def pynetdicom_scp(handler: Any = None, **ae_kwargs: Any) -> Iterator[tuple[int, list[Dataset]]]:
    """An in-process pynetdicom Storage SCP on a kernel-chosen port, recording datasets."""
    patch_pynetdicom_nodelay()
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        if handler is not None:
            answer = handler(event)
            if answer is not None:
                return int(answer)
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    ae = AE(ae_title=ae_kwargs.pop("ae_title", "PYNETDICOM"))
    for key, value in ae_kwargs.items():
        setattr(ae, key, value)
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()


def _contexts(*pairs: tuple[str, str]) -> list[ProposedContext]:
    out = [ProposedContext(1, Verification, (ImplicitVRLittleEndian,))]
    for n, (sop, ts) in enumerate(pairs, start=1):
        out.append(ProposedContext(2 * n + 1, sop, (ts,)))
    return out


def _assoc(
    port: int, *pairs: tuple[str, str], called: str = "PYNETDICOM", timeouts: Timeouts | None = None
) -> Association:
    return Association.request(
        "127.0.0.1",
        port,
        called,
        "MIGRATOR",
        _contexts(*pairs),
        timeouts=timeouts or Timeouts(acse=5, dimse=5, network=5, connect=5),
    )


def test_echo_and_store_arrive_intact_and_socket_has_nodelay() -> None:
    path = str(get_testdata_file("CT_small.dcm"))
    h = inspect_file(path)
    with pynetdicom_scp() as (port, received):
        assoc = _assoc(port, (h.sop_class_uid, h.transfer_syntax))
        assert assoc._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert assoc.c_echo().status == 0
        ctx = assoc.context_for(h.sop_class_uid, h.transfer_syntax)
        assert ctx is not None
        r = assoc.c_store(
            ctx,
            h.sop_class_uid,
            h.sop_instance_uid,
            FileSlice(path, h.dataset_offset, h.size - h.dataset_offset),
        )
        assert r.status == 0
        assoc.release()
        assert not assoc.is_alive
    original = pydicom.dcmread(path)
    [got] = received
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert got.PixelData == original.PixelData
    assert got == original  # datasets compare element by element (group 0002 excluded)


def test_large_dataset_is_fragmented_to_the_peer_max_pdu(tmp_path: Any) -> None:
    """8 MB of pixel data crosses hundreds of P-DATA PDUs and arrives byte for byte."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows = ds.Columns = 2048
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.random.default_rng(1).integers(0, 65535, 2048 * 2048, "<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    h = inspect_file(str(path))
    with pynetdicom_scp(maximum_pdu_size=16382) as (port, received):
        assoc = _assoc(port, (CT, ExplicitVRLittleEndian))
        assert assoc.peer_max_pdu == 16382
        ctx = assoc.context_for(CT, ExplicitVRLittleEndian)
        assert ctx is not None
        r = assoc.c_store(
            ctx,
            CT,
            h.sop_instance_uid,
            FileSlice(str(path), h.dataset_offset, h.size - h.dataset_offset),
        )
        assoc.release()
    assert r.status == 0
    assert received[0].PixelData == ds.PixelData


def test_bytes_payload_in_memory() -> None:
    path = str(get_testdata_file("MR_small.dcm"))
    h = inspect_file(path)
    data = Path(path).read_bytes()[h.dataset_offset :]
    with pynetdicom_scp() as (port, received):
        assoc = _assoc(port, (h.sop_class_uid, h.transfer_syntax))
        ctx = assoc.context_for(h.sop_class_uid, h.transfer_syntax)
        assert ctx is not None
        assert assoc.c_store(ctx, h.sop_class_uid, h.sop_instance_uid, data).status == 0
        assoc.release()
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    assert received[0].PixelData == ds.PixelData


def test_failure_status_is_returned_and_the_association_stays_usable() -> None:
    path = str(get_testdata_file("CT_small.dcm"))
    h = inspect_file(path)
    with pynetdicom_scp(handler=lambda e: 0xA700) as (port, _):
        assoc = _assoc(port, (h.sop_class_uid, h.transfer_syntax))
        ctx = assoc.context_for(h.sop_class_uid, h.transfer_syntax)
        assert ctx is not None
        data = Path(path).read_bytes()[h.dataset_offset :]
        assert assoc.c_store(ctx, h.sop_class_uid, h.sop_instance_uid, data).status == 0xA700
        # The association stays usable after a failure status.
        assert assoc.c_echo().status == 0
        assoc.release()


def test_wrong_called_ae_is_a_permanent_rejection_with_the_reason() -> None:
    with (
        pynetdicom_scp(require_called_aet=True) as (port, _),
        pytest.raises(AssociationRejected, match="called AE title not recognized") as err,
    ):
        _assoc(port, (CT, ExplicitVRLittleEndian), called="WRONG")
    assert err.value.result == 1 and not err.value.transient


def test_abort_mid_store_raises_association_lost() -> None:
    path = str(get_testdata_file("CT_small.dcm"))
    h = inspect_file(path)

    def abort(event: Any) -> None:
        event.assoc.abort()

    with pynetdicom_scp(handler=abort) as (port, _):
        assoc = _assoc(port, (h.sop_class_uid, h.transfer_syntax))
        ctx = assoc.context_for(h.sop_class_uid, h.transfer_syntax)
        assert ctx is not None
        with pytest.raises(AssociationLost):
            assoc.c_store(
                ctx,
                h.sop_class_uid,
                h.sop_instance_uid,
                FileSlice(path, h.dataset_offset, h.size - h.dataset_offset),
            )
        assert not assoc.is_alive


def test_dimse_timeout_aborts_and_raises_within_the_timeout() -> None:
    path = str(get_testdata_file("CT_small.dcm"))
    h = inspect_file(path)
    release = threading.Event()

    def stall(event: Any) -> int:
        release.wait(10)
        return 0

    with pynetdicom_scp(handler=stall) as (port, _):
        assoc = _assoc(
            port,
            (h.sop_class_uid, h.transfer_syntax),
            timeouts=Timeouts(connect=5, acse=5, dimse=1.0, network=5),
        )
        ctx = assoc.context_for(h.sop_class_uid, h.transfer_syntax)
        assert ctx is not None
        t0 = time.monotonic()
        with pytest.raises(AssociationLost, match="DIMSE timeout"):
            assoc.c_store(
                ctx,
                h.sop_class_uid,
                h.sop_instance_uid,
                FileSlice(path, h.dataset_offset, h.size - h.dataset_offset),
            )
        assert 0.9 < time.monotonic() - t0 < 3
        release.set()


def test_closed_port_is_refused_quickly() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(ConnectError, match="refused"):
        _assoc(port, (CT, ExplicitVRLittleEndian))
    assert time.monotonic() - t0 < 2


def test_unsupported_sop_class_context_is_reported_rejected() -> None:
    with pynetdicom_scp() as (port, _):
        assoc = _assoc(
            port, ("1.2.3.4.5.6.7.8", ExplicitVRLittleEndian), (CT, ExplicitVRLittleEndian)
        )
        assert assoc.context_for("1.2.3.4.5.6.7.8", ExplicitVRLittleEndian) is None
        assert assoc.rejected["1.2.3.4.5.6.7.8"] == 3  # abstract syntax not supported
        assert assoc.context_for(CT, ExplicitVRLittleEndian) is not None
        assoc.release()


def _pdvs(stream: bytes) -> list[tuple[int, int, bytes]]:
    """The P-DATA-TF PDUs of a client's byte stream: (PDU length, PDV control, PDV data)
    for each PDV (other PDUs skipped)."""
    out = []
    pos = 0
    while pos + 6 <= len(stream):
        pdu_type = stream[pos]
        (length,) = struct.unpack_from(">I", stream, pos + 2)
        body = stream[pos + 6 : pos + 6 + length]
        if pdu_type == 0x04:
            item = 0
            while item + 6 <= len(body):
                (item_len,) = struct.unpack_from(">I", body, item)
                out.append((length, body[item + 5], body[item + 6 : item + 4 + item_len]))
                item += 4 + item_len
        pos += 6 + length
    return out


# 4309/4311: odd maximums (fragments stay even); 4310: the dataset and its pad byte fill one
# PDU exactly.
@pytest.mark.parametrize("max_pdu", [16382, 1030, 4309, 4310, 4311])
@pytest.mark.parametrize("payload", ["file", "bytes"])
def test_odd_length_dataset_is_padded_and_split_to_the_peer_max_pdu(
    max_pdu: int, payload: str
) -> None:
    """Conformance of both data paths (file: zero-copy sendfile on plain TCP; bytes: one
    gathering sendmsg) on the wire: every P-DATA-TF within the peer's maximum, even PDVs,
    only the last one flagged last, the data = the dataset plus one NUL; and pynetdicom reads
    the (deflated, odd-length) dataset back."""
    path = str(get_testdata_file("image_dfl.dcm"))
    h = inspect_file(path)
    raw = Path(path).read_bytes()[h.dataset_offset :]
    assert len(raw) % 2 == 1
    wire = bytearray()
    lock = threading.Lock()

    def tap(data: bytes) -> None:
        with lock:
            wire.extend(data)

    with (
        pynetdicom_scp(maximum_pdu_size=max_pdu) as (port, received),
        TcpProxy("127.0.0.1", port, tap=tap) as proxy,
    ):
        assoc = _assoc(proxy.port, (h.sop_class_uid, h.transfer_syntax))
        assert assoc.peer_max_pdu == max_pdu
        ctx = assoc.context_for(h.sop_class_uid, h.transfer_syntax)
        assert ctx is not None
        dataset: FileSlice | bytes = (
            FileSlice(path, h.dataset_offset, len(raw)) if payload == "file" else raw
        )
        assert assoc.c_store(ctx, h.sop_class_uid, h.sop_instance_uid, dataset).status == 0
        assoc.release()
    data_pdvs = [(n, c, d) for n, c, d in _pdvs(bytes(wire)) if not c & 0x01]
    assert all(n <= max_pdu for n, _, _ in data_pdvs)
    assert all(len(d) % 2 == 0 for _, _, d in data_pdvs)
    assert [bool(c & 0x02) for _, c, _ in data_pdvs] == [False] * (len(data_pdvs) - 1) + [True]
    assert b"".join(d for _, _, d in data_pdvs) == raw + b"\x00"
    original = pydicom.dcmread(path)
    assert received[0].PixelData == original.PixelData
    assert received[0].SOPInstanceUID == original.SOPInstanceUID


def test_a_file_that_shrinks_while_sent_fails_alone_and_aborts_the_association(
    tmp_path: Path,
) -> None:
    """The peer holds half a dataset: the association is aborted (never a short dataset
    presented as complete) and the error names the file."""
    path = str(get_testdata_file("CT_small.dcm"))
    h = inspect_file(path)
    copy = tmp_path / "ct.dcm"
    copy.write_bytes(Path(path).read_bytes())
    with pynetdicom_scp() as (port, received):
        assoc = _assoc(port, (h.sop_class_uid, h.transfer_syntax))
        ctx = assoc.context_for(h.sop_class_uid, h.transfer_syntax)
        assert ctx is not None
        claimed = h.size - h.dataset_offset + 4096  # longer than the file now is
        with pytest.raises(SourceError, match="shrank"):
            assoc.c_store(
                ctx,
                h.sop_class_uid,
                h.sop_instance_uid,
                FileSlice(str(copy), h.dataset_offset, claimed),
            )
        assert not assoc.is_alive
    assert received == []
