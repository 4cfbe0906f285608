"""The old PACS fails during a migration (issue 17): it aborts in the middle of a C-GET, or
it is restarted while the job runs. Every instance must end accounted for, and here, since
the source comes back, stored: the destination's instance set equals the source's.

The old PACS is a real Orthanc behind a loopback TCP proxy (tests/peers/tcp_proxy.py) that
can reset every connection at a chosen point of the transfer (a source that crashed) and be
pointed at the Orthanc started again on other ports with the same storage (a restart, seen
from the migrator as the same address going away and coming back).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.behaviourhelpers import send
from tests.peers.dcmtk import StoreScpPeer
from tests.peers.orthanc import OrthancPeer
from tests.peers.tcp_proxy import TcpProxy
from tests.test_source_dimse import OUR_AE, _old_pacs
from tests.test_source_dimse_retrieve import _archive

pytestmark = pytest.mark.timeout(300)

FRONT_ENDS = ["store", "run"]


class _CutOnce:
    """A down tap: after ``after`` bytes from the source, reset every connection once."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.seen = 0
        self.proxy: TcpProxy | None = None
        self.cut_at: int | None = None

    def __call__(self, data: bytes) -> None:
        self.seen += len(data)
        if self.cut_at is None and self.seen >= self.after and self.proxy is not None:
            self.cut_at = self.seen
            # Not from this pump thread: reset() closes the socket it is reading.
            threading.Thread(target=self.proxy.reset, daemon=True).start()


def _received(storescp: StoreScpPeer) -> set[str]:
    return storescp.received_sop_uids()


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_a_source_that_aborts_mid_c_get_loses_nothing(
    front_end: str,
    orthanc_factory: Callable[..., OrthancPeer],
    storescp: StoreScpPeer,
    tmp_path: Path,
) -> None:
    """The connection to the old PACS is reset in the middle of a series' C-GET (after
    ~40 KB of its answers, of ~250 KB): the series is asked for again and every instance
    arrives once at the destination."""
    pacs = _old_pacs(orthanc_factory)
    by_sop = _archive(pacs, tmp_path, count=24, series=4)
    cut = _CutOnce(after=40_000)
    with TcpProxy("127.0.0.1", pacs.dicom_port, down_tap=cut) as proxy:
        cut.proxy = proxy
        result = send(
            front_end,
            tmp_path,
            storescp.port,
            storescp.aet,
            tmp_path,
            "--source-calling-ae",
            OUR_AE,
            sources=[f"dimse://{pacs.aet}@127.0.0.1:{proxy.port}"],
        )
    assert cut.cut_at is not None, "the source was never cut: the test proves nothing"
    assert result.rc == 0, result.tail()
    totals = result.totals()
    assert totals["planned"] == totals["stored"] == 24, totals
    assert _received(storescp) == set(by_sop) == pacs.all_sop_instance_uids()


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_a_source_restarted_mid_job_loses_nothing(
    front_end: str,
    orthanc_factory: Callable[..., OrthancPeer],
    storescp: StoreScpPeer,
    tmp_path: Path,
) -> None:
    """The old PACS is stopped once a quarter of the archive came from it (~100 KB of its
    answers) and started again (same storage, new ports behind the same address, a few
    seconds away): the job rides it out with its retries; every instance arrives."""
    pacs = _old_pacs(orthanc_factory)
    by_sop = _archive(pacs, tmp_path, count=40, series=8)
    restarted: list[float] = []
    errors: list[BaseException] = []
    begin = threading.Event()

    def on_answer(data: bytes, seen: list[int] = [0]) -> None:  # noqa: B006 - a counter
        seen[0] += len(data)
        if seen[0] >= 100_000:
            begin.set()

    with TcpProxy("127.0.0.1", pacs.dicom_port, down_tap=on_answer) as proxy:

        def restart() -> None:
            if not begin.wait(120):
                return
            t0 = time.monotonic()
            try:
                pacs.stop()
                proxy.reset()  # its connections die with it
                pacs.start()  # same storage directory, new ports
                proxy.target = ("127.0.0.1", pacs.dicom_port)
            except BaseException as exc:  # the test says what went wrong, not a silent thread
                errors.append(exc)
                raise
            restarted.append(time.monotonic() - t0)

        thread = threading.Thread(target=restart, daemon=True)
        thread.start()
        result = send(
            front_end,
            tmp_path,
            storescp.port,
            storescp.aet,
            tmp_path,
            "--source-calling-ae",
            OUR_AE,
            *(["--batch-files", "5"] if front_end == "run" else []),
            "--retries",
            "6",
            sources=[f"dimse://{pacs.aet}@127.0.0.1:{proxy.port}"],
        )
        begin.set()  # never cut: let the thread end
        thread.join(60)
    assert not errors, errors
    assert restarted, "the source was never restarted: the test proves nothing"
    assert result.rc == 0, result.tail()
    totals = result.totals()
    assert totals["planned"] == totals["stored"] == 40, totals
    assert _received(storescp) == set(by_sop) == pacs.all_sop_instance_uids()
    print(f"{front_end}: the old PACS was away {restarted[0]:.1f} s; every instance stored")
