"""C-GET on our upper layer (migrator/dul/retrieving.py) against pynetdicom's C-GET SCP.

The behaviour with real archives (Orthanc, dcmqrscp: faults, restarts, C-MOVE) is tested
through the dimse:// source (tests/test_source_dimse*.py); here, the wire: the identifier,
role selection, datasets split over many PDUs, pending answers and a final answer that
carries the failed instances' list.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

import pydicom
import pydicom.filewriter
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
)

from migrator.dul.acse import decode_associate_rq
from migrator.dul.association import Timeouts
from migrator.dul.pdu import ProposedContext, encode_associate_rq
from migrator.dul.retrieving import (
    RetrievingAssociation,
    SubOperation,
    decode_identifier,
    encode_identifier,
    identifier,
)
from tests.peers.orthanc import free_port_all_interfaces

GET = str(StudyRootQueryRetrieveInformationModelGet)
SC = str(SecondaryCaptureImageStorage)
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
STUDY, SERIES = "1.2.3.4", "1.2.3.4.5"


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT])
def test_the_identifier_reads_back_as_the_query(syntax: str) -> None:
    sops = ["1.2.3.4.5.6", "1.2.3.4.5.77"]
    ds = read_dataset(io.BytesIO(identifier(STUDY, SERIES, sops, syntax)), syntax == IMPLICIT, True)
    assert ds.QueryRetrieveLevel == "IMAGE"
    assert ds.StudyInstanceUID == STUDY and ds.SeriesInstanceUID == SERIES
    assert list(ds.SOPInstanceUID) == sops


def test_the_association_request_asks_for_the_scp_role() -> None:
    rq = encode_associate_rq(
        "OLDPACS", "MIGRATOR", [ProposedContext(1, GET, (IMPLICIT,))], 16384, [(SC, False, True)]
    )
    assert decode_associate_rq(rq[6:]).user.roles == {SC: (0, 1)}


def _instance(n: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = f"1.2.3.4.5.{n}"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.PatientID = "P"
    ds.BitsAllocated = 8
    ds.PixelData = bytes([n % 256]) * 20_000  # over the 4 KB PDUs: many fragments
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(EXPLICIT)
    return ds


@pytest.fixture
def get_scp() -> Iterator[tuple[int, list[Dataset]]]:
    """pynetdicom's C-GET SCP holding three instances of one series, max PDU 4096."""
    held = [_instance(n) for n in (1, 2, 3)]
    asked: list[Dataset] = []

    def on_get(event: Any) -> Iterator[Any]:
        asked.append(event.identifier)
        uids = event.identifier.SOPInstanceUID
        wanted = {uids} if isinstance(uids, str) else set(uids)
        found = [ds for ds in held if ds.SOPInstanceUID in wanted]
        yield len(found)
        for ds in found:
            yield 0xFF00, ds

    ae = AE("OLDPACS")
    ae.maximum_pdu_size = 4096
    ae.add_supported_context(GET, [IMPLICIT, EXPLICIT])
    ae.add_supported_context(SC, [EXPLICIT], scu_role=True, scp_role=True)
    port = free_port_all_interfaces()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_GET, on_get)]
    )
    assert server is not None
    try:
        yield port, asked
    finally:
        server.shutdown()


def test_a_c_get_brings_each_instance_and_the_final_counts(
    get_scp: tuple[int, list[Dataset]],
) -> None:
    port, asked = get_scp
    assoc = RetrievingAssociation.request(
        "127.0.0.1",
        port,
        "OLDPACS",
        "MIGRATOR",
        [ProposedContext(1, GET, (IMPLICIT,)), ProposedContext(3, SC, (EXPLICIT,))],
        max_pdu=4096,
        timeouts=Timeouts(dimse=10),
        roles=[(SC, False, True)],
    )
    got: list[SubOperation] = []
    threads: set[str] = set()

    def on_store(sub: SubOperation) -> int:
        threads.add(threading.current_thread().name)
        got.append(sub)
        return 0xA900 if sub.sop_instance.endswith(".3") else 0x0000  # one refused

    sops = ["1.2.3.4.5.1", "1.2.3.4.5.2", "1.2.3.4.5.3"]
    answers = list(assoc.c_get(GET, STUDY, SERIES, sops, on_store))
    assert list(asked[0].SOPInstanceUID) == sops and asked[0].QueryRetrieveLevel == "IMAGE"
    assert [a.pending for a in answers] == [True, True, True, False]
    final = answers[-1]
    # One refused: a warning status and the failed instance listed in an identifier that
    # follows the final answer (read, or the association would be left mid-message).
    assert (final.status, final.completed, final.failed, final.remaining) == (0xB000, 2, 1, 0)
    assert [s.sop_instance for s in got] == sops
    assert threads == {threading.current_thread().name}  # no thread of its own
    for sub in got:
        n = int(sub.sop_instance.rsplit(".", 1)[1])
        ds = read_dataset(io.BytesIO(sub.dataset), False, True)
        assert ds.SOPInstanceUID == sub.sop_instance and sub.transfer_syntax == EXPLICIT
        assert ds.PixelData == bytes([n]) * 20_000  # whole, from ~5 PDUs each
    # The association is usable again: a second request on it.
    again = list(assoc.c_get(GET, STUDY, SERIES, sops[:1], on_store))
    assert again[-1].status == 0x0000 and again[-1].completed == 1
    assert assoc.is_established
    assoc.release()
    assert not assoc.is_established


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT])
def test_a_query_identifier_and_its_answer_read_as_pydicom_reads_them(syntax: str) -> None:
    """What a listing sends (keys, and empty values for what to return) reads back with
    pydicom; an answer pydicom wrote reads as text by tag, values without their padding."""
    sent = encode_identifier(
        [
            (0x0020000D, b"UI", "1.2.3"),
            (0x00080052, b"CS", "IMAGE"),
            (0x00080020, b"DA", "20240101-20241231"),
            (0x00080018, b"UI", ""),
        ],
        syntax,
    )
    ds = read_dataset(io.BytesIO(sent), syntax == IMPLICIT, True)
    assert (ds.StudyInstanceUID, ds.QueryRetrieveLevel) == ("1.2.3", "IMAGE")
    assert ds.StudyDate == "20240101-20241231" and ds.SOPInstanceUID == ""
    answer = Dataset()
    answer.QueryRetrieveLevel = "STUDY"
    answer.StudyInstanceUID = "1.2.345"
    answer.NumberOfStudyRelatedInstances = 12
    answer.ModalitiesInStudy = ["CT", "MR"]
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, syntax == IMPLICIT
    pydicom.filewriter.write_dataset(buf, answer)
    got = decode_identifier(buf.getvalue(), syntax)
    assert got[0x0020000D] == "1.2.345" and got[0x00080052] == "STUDY"
    assert got[0x00201208] == "12" and got[0x00080061] == "CT\\MR"


@pytest.mark.parametrize("undefined", [True, False])
@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT])
def test_an_answer_with_sequences_loses_no_element_after_them(syntax: str, undefined: bool) -> None:
    """A source may add sequences nobody asked for (here before the series UID, nested):
    they are stepped over, whatever their length encoding, and what follows is read."""
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.9"
    nested = Dataset()
    nested.ReferencedSOPClassUID = "1.2.8"
    inner.ReferencedImageSequence = [nested]
    answer = Dataset()
    answer.SOPInstanceUID = "1.2.3.4"
    answer.ReferencedStudySequence = [inner, Dataset()]
    answer.SeriesInstanceUID = "1.2.3.5"
    for seq in (answer["ReferencedStudySequence"], inner["ReferencedImageSequence"]):
        seq.is_undefined_length = undefined
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, syntax == IMPLICIT
    pydicom.filewriter.write_dataset(buf, answer)
    got = decode_identifier(buf.getvalue(), syntax)
    assert got[0x00080018] == "1.2.3.4"
    assert got[0x0020000E] == "1.2.3.5"
