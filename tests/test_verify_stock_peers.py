"""verify's C-FINDs against query peers as they ship (Nagle on) wait for no delayed ACK.

Stock DCMTK `dcmqrscp` and stock Orthanc (no ``TCP_NODELAY=1`` in their environment) send a
C-FIND response's command and identifier as two small segments and hold the second until
the first is ACKed; a client whose kernel delays that ACK waits the ~40 ms timer about once
per C-FIND. `verify` and the reconciliation with the source query through pynetdicom, whose
reads re-arm TCP_QUICKACK (``patch_pynetdicom_nodelay``, migrator/netutil.py). Measured on
the loaded 2-core CI machine: 43–71 ms per C-FIND with the quick ACKs taken out, 4–7 ms
(median) with them. What a user checks: the instance lists `verify` compares are right, and
the C-FINDs are not held (median far below the 40 ms timer, with a wide margin).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from migrator import synth
from migrator.settings import Settings
from migrator.verify.query import QueryClient
from tests.peers.dcmqrscp import DcmqrscpPeer
from tests.peers.orthanc import OrthancPeer

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's delayed ACK"),
]

#: Half the delayed-ACK timer: a held C-FIND takes more than twice this, an answered one
#: (loopback, a handful of matches) ~5 ms even on the loaded CI machine.
BOUND_S = 0.02
ROUNDS = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], dict[str, set[str]]]:
    """8 files in 2 studies of 2 series; and Study Instance UID -> its SOP Instance UIDs."""
    folder = tmp_path_factory.mktemp("stockq") / "corpus"
    files = synth.write_corpus(
        folder, count=8, size="tiny", studies=2, series_per_study=2, seed=2311
    )
    studies: dict[str, set[str]] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        studies.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SOPInstanceUID))
    return files, studies


@pytest.mark.parametrize("peer", ["dcmqrscp", "orthanc"])
def test_c_finds_to_a_stock_peer_are_not_held_by_delayed_acks(
    peer: str,
    corpus: tuple[list[Path], dict[str, set[str]]],
    tmp_path: Path,
    orthanc_factory: Callable[..., OrthancPeer],
) -> None:
    files, studies = corpus
    if peer == "dcmqrscp":
        qr = DcmqrscpPeer(tmp_path / "qr", aet="STOCKQR", nodelay=False)
        qr.add(files)
        qr.start()
        port, aet = qr.port, qr.aet
    else:
        orthanc = orthanc_factory(
            aet="STOCKQR", nodelay=False, verbose=False, extra={"DicomAlwaysAllowFind": True}
        )
        for f in files:
            orthanc.upload(f.read_bytes())
        port, aet = orthanc.dicom_port, orthanc.aet
    try:
        per_find: list[float] = []
        config = Settings(host="127.0.0.1", port=port, called_ae=aet, calling_ae="MIGRATOR")
        with QueryClient(config) as client:
            for _ in range(ROUNDS):
                for study, sops in sorted(studies.items()):
                    before, started = client.queries, time.monotonic()
                    assert client.study_instances(study) == sops  # SERIES, then IMAGE level
                    per_find.append((time.monotonic() - started) / (client.queries - before))
        assert client.queries == ROUNDS * len(studies) * 3  # 1 SERIES + 2 IMAGE per study
        median = statistics.median(per_find)
        assert median < BOUND_S, (f"median C-FIND {median * 1000:.1f} ms", per_find)
    finally:
        if peer == "dcmqrscp":
            qr.stop()
