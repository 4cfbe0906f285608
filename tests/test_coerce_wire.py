"""A coerced file on the wire: its rewritten head from memory, then the file's own bytes,
in the same P-DATA fragments, by sendfile and by read-and-sendmsg (TLS, or files above
``_SENDFILE_MAX``), to an in-process pynetdicom SCP with a small maximum PDU so that the head
alone spans several fragments."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from migrator.dul import association
from migrator.dul.association import FileSlice
from tests.coercehelpers import coerce, dicom_file, write_rules
from tests.test_association import CT, _assoc, pynetdicom_scp


@pytest.mark.parametrize("way", ["sendfile", "read-and-sendmsg"])
def test_a_spliced_dataset_arrives_whole_across_fragments(
    tmp_path: Path, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if way == "read-and-sendmsg":
        monkeypatch.setattr(association, "_SENDFILE_MAX", 0)
    comment = "x" * 9999  # an LT of ~10 KB: the head crosses several 4 KB fragments
    rules = write_rules(
        tmp_path / "r",
        f"rules:\n  - set: StudyComments\n    value: {comment}\n"
        "  - set: PatientID\n    value: NEW-ID\n",
    )
    f = dicom_file(tmp_path / "a.dcm", PatientID="OLD")
    header, payload = coerce(rules, f)
    assert payload.head is not None and len(payload.head) > 2 * 4096
    dataset = FileSlice(str(f), payload.resume, header.size - payload.resume, payload.head)
    with pynetdicom_scp(maximum_pdu_size=4096) as (port, received):
        assoc = _assoc(port, (CT, ExplicitVRLittleEndian))
        ctx = assoc.context_for(CT, ExplicitVRLittleEndian)
        assert ctx is not None
        answer = assoc.c_store(ctx, CT, header.sop_instance_uid, dataset)
        assoc.release()
    assert answer.status == 0
    got, original = received[0], pydicom.dcmread(f)
    assert got.PatientID == "NEW-ID" and got.StudyComments.rstrip() == comment
    assert got.PixelData == original.PixelData
