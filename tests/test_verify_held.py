"""`held_instances`: which of a list of instances the destination holds, asked in batches.

Against a real Orthanc (C-FIND at IMAGE level with UID lists, and QIDO-RS with its DICOMweb
plugin): the answer names exactly the instances uploaded, with the PatientID and study the
PACS holds them under, for more UIDs than one query carries; a copy filed under another
study is found too (the pre-check's case).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from migrator import synth
from migrator.settings import Settings
from migrator.verify import held
from migrator.verify.held import Held, held_instances
from tests.peers.orthanc import OrthancPeer, orthanc_peer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrthancPeer, list[Path]]]:
    tmp = tmp_path_factory.mktemp("held")
    files = synth.write_corpus(tmp / "src", count=12, size="tiny", studies=2, seed=2207)
    extra = {"DicomAlwaysAllowFind": True}
    with orthanc_peer(tmp / "orthanc", verbose=False, dicomweb=True, extra=extra) as orthanc:
        for f in files[:8]:
            orthanc.upload(f.read_bytes())
        yield orthanc, files


def pairs(files: list[Path]) -> list[tuple[str, str]]:
    out = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out.append((str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)))
    return out


def expected(files: list[Path]) -> dict[str, Held]:
    out = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = Held(str(ds.StudyInstanceUID), str(ds.PatientID))
    return out


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_names_exactly_the_held_instances_over_several_queries(
    pacs: tuple[OrthancPeer, list[Path]], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    orthanc, files = pacs
    monkeypatch.setattr(held, "CHUNK", 5)  # 12 UIDs: three queries, answers from each
    config = Settings(
        host=orthanc.host,
        port=orthanc.dicom_port,
        called_ae=orthanc.aet,
        dicomweb=orthanc.dicomweb_url if kind == "dicomweb" else None,
    )
    found = held_instances(config, pairs(files))
    assert found == expected(files[:8])


def test_a_copy_under_another_study_is_found(pacs: tuple[OrthancPeer, list[Path]]) -> None:
    """The pre-check asks with the study the file says; the PACS holds it under another."""
    orthanc, files = pacs
    config = Settings(host=orthanc.host, port=orthanc.dicom_port, called_ae=orthanc.aet)
    [(_, sop)] = pairs(files[:1])
    found = held_instances(config, [("1.2.3.999", sop)])
    assert found == expected(files[:1])


def test_nothing_asked_nothing_queried() -> None:
    # No destination at this port: an empty list never opens an association.
    assert held_instances(Settings(host="127.0.0.1", port=1), []) == {}
