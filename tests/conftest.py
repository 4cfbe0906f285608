"""Shared fixtures: real peers on free ports (TESTING.md §1–§3).

Peers that cannot start make the test fail with the reason and the peer's log; nothing is
skipped because a program is missing (the test command installs Orthanc and DCMTK).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from migrator.netutil import free_port as _free_port
from tests.peers.dcmtk import StoreScpPeer
from tests.peers.dicomcompare import compare_datasets as _compare_datasets
from tests.peers.orthanc import OrthancPeer
from tests.peers.redis import redis_server  # noqa: F401  (fixture)
from tests.peers.s3 import moto_s3  # noqa: F401  (fixture)

# A shell without job control starts background commands (`bash .ci/run &`) with SIGINT
# ignored, and every `migrator` a test starts would inherit that: the tests of Ctrl-C
# (exit 130, nothing left running) would then watch a run that cannot be interrupted. A
# handler (not SIG_IGN) is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def free_port() -> int:
    """A loopback port the kernel reports free (prove the listener's identity after binding)."""
    return _free_port()


@pytest.fixture
def compare_datasets() -> Callable[..., None]:
    """``compare_datasets(a, b, pixels="bytes"|"values")``: equal outside group 0002."""
    return _compare_datasets


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., OrthancPeer]]:
    """``orthanc_factory(check_called_aet=True, compression="none", ...)`` → started peer.

    Every peer made is stopped at teardown: SIGTERM now, the ~3.5 s wait for the exit (SIGKILL
    after 10 s) in the background so the next test need not wait for it.
    """
    peers: list[OrthancPeer] = []

    def make(**options: Any) -> OrthancPeer:
        peer = OrthancPeer(tmp_path / f"orthanc{len(peers)}", **options)
        peers.append(peer)
        return peer.start()

    yield make
    for peer in reversed(peers):
        peer.stop(wait=False)


@pytest.fixture
def orthanc(orthanc_factory: Callable[..., OrthancPeer]) -> OrthancPeer:
    """A default Orthanc: AET ORTHANC, called AET not checked, every syntax accepted."""
    return orthanc_factory()


@pytest.fixture
def storescp_factory(tmp_path: Path) -> Iterator[Callable[..., StoreScpPeer]]:
    """``storescp_factory(ignore=True, aet=...)`` → started storescp; stopped at teardown."""
    peers: list[StoreScpPeer] = []

    def make(**options: Any) -> StoreScpPeer:
        peer = StoreScpPeer(tmp_path / f"storescp{len(peers)}", **options)
        peers.append(peer)
        return peer.start()

    yield make
    for peer in reversed(peers):
        peer.stop()


@pytest.fixture
def storescp(storescp_factory: Callable[..., StoreScpPeer]) -> StoreScpPeer:
    """A storing storescp (``+xa -pm --fork``, files in ``storescp.out_dir``)."""
    return storescp_factory()
