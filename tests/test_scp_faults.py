"""Fault injection of `migrator scp`: the rules (unit) and what a pynetdicom SCU sees (live)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association

from migrator.commands.scp import scp_command
from migrator.errors import ConfigError
from migrator.netutil import patch_pynetdicom_nodelay
from migrator.scp.faults import Action, FaultInjector, FaultPlan
from tests.peers.migrator_scp import RunningScp, make_instance, receivers

CT = "1.2.840.10008.5.1.4.1.1.2"

# -- the rules, without a network ---------------------------------------------------------


def _actions(plan: FaultPlan, assocs: list[int]) -> list[str]:
    """Run one on_store per entry; the entry says which association it arrives on."""
    injector = FaultInjector(plan)
    keys = {n: _Key() for n in set(assocs)}
    out = []
    for n in assocs:
        d = injector.on_store(keys[n])
        out.append(d.action.value if d.action is not Action.FAIL else f"{d.status:04X}")
    return out


class _Key:
    """Stands in for an Association (the injector only needs a weak-referenceable key)."""


@pytest.mark.parametrize(
    ("plan", "assocs", "expected"),
    [
        (FaultPlan(fail_status=0xA700), [1, 1, 2], ["A700", "A700", "A700"]),
        (
            FaultPlan(fail_status=0xA700, fail_first=2),
            [1, 2, 2, 2],
            ["A700", "A700", "store", "store"],
        ),
        (
            FaultPlan(fail_status=0xC000, fail_every=3),
            [1] * 7,
            ["store", "store", "C000", "store", "store", "C000", "store"],
        ),
        (
            FaultPlan(fail_status=0xA702, fail_every=2, fail_first=1),
            [1] * 6,
            ["store", "A702", "store", "store", "store", "store"],
        ),
        (FaultPlan(abort_after=2), [1, 1, 1, 2, 2, 2], ["store", "store", "abort"] * 2),
        (
            FaultPlan(abort_after=1, fail_first=1),
            [1, 1, 2, 2, 2],
            ["store", "abort", "store", "store", "store"],
        ),
        (FaultPlan(abort_after=0), [1, 2], ["abort", "abort"]),
        (FaultPlan(response_delay=0.5), [1, 1], ["store", "store"]),
    ],
)
def test_fault_selection_rules(plan: FaultPlan, assocs: list[int], expected: list[str]) -> None:
    """Each documented rule, C-STOREs numbered across associations."""
    assert _actions(plan, assocs) == expected


def test_fail_first_budget_is_exact_under_concurrency() -> None:
    """8 threads racing for a budget of 37 faults: exactly 37 are handed out."""
    injector = FaultInjector(FaultPlan(fail_status=0xA700, fail_first=37))
    results: list[Action] = []
    lock = threading.Lock()

    def worker() -> None:
        key = _Key()
        for _ in range(50):
            action = injector.on_store(key).action
            with lock:
                results.append(action)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(Action.FAIL) == 37
    assert len(results) == 400


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (FaultPlan(fail_first=2), "--fail-first needs --fail-status"),
        (FaultPlan(fail_every=2), "--fail-every needs --fail-status"),
        (FaultPlan(abort_after=1, fail_status=0xA700), "cannot be combined"),
        (FaultPlan(abort_after=1, fail_every=2), "cannot be combined"),
    ],
)
def test_ambiguous_combinations_are_refused(plan: FaultPlan, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan.validate()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fail-first", "2"], "--fail-first needs --fail-status"),
        (["--fail-status", "XYZ"], "not a hex status"),
        (["--fail-status", "1FFFF"], "not a 16-bit status"),
        (["--abort-after", "1", "--fail-status", "A700"], "cannot be combined"),
    ],
)
def test_cli_rejects_bad_fault_flags_with_exit_2(
    args: list[str], message: str, tmp_path: Path
) -> None:
    """Bad fault flags stop the command before it listens, exit 2, and say why."""
    result = CliRunner().invoke(scp_command, ["0", "-o", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_help_documents_the_fault_flags() -> None:
    """--help explains the testing features and exit codes."""
    result = CliRunner().invoke(scp_command, ["--help"])
    assert result.exit_code == 0
    for text in ("--fail-first", "--abort-after 3 --fail-first 1", "[testing]", "Exit codes"):
        assert text in result.output
    assert "MIGRATOR_SCP_FAIL_STATUS" in result.output


# -- what a pynetdicom SCU sees ------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _nodelay() -> None:
    patch_pynetdicom_nodelay()


@pytest.fixture
def scp_factory(tmp_path: Path) -> Iterator[Any]:
    """Receivers started in this test's tmp dir; none outlives the test."""
    with receivers(tmp_path) as start:
        yield start


def _associate(scp: RunningScp, **kw: Any) -> Association:
    ae = AE(ae_title="FAULT-TEST")
    # 30 s: an answer, not a timeout, is what these tests look at (a loaded CI machine).
    ae.acse_timeout = kw.pop("acse_timeout", 30)
    ae.dimse_timeout = kw.pop("dimse_timeout", 10)
    ae.network_timeout = 10
    ae.add_requested_context(CT, ["1.2.840.10008.1.2.1"])
    return ae.associate(scp.host, scp.port, ae_title=scp.ae_title, **kw)


def _instance(n: int) -> Dataset:
    return make_instance("1.2.826.0.1.9", "1.2.826.0.1.9.1", f"1.2.826.0.1.9.1.{n}")


def _status(rsp: Dataset) -> int | None:
    """The Status of a C-STORE response, None for the empty response of a lost association."""
    value = rsp.get("Status")
    return None if value is None else int(value)


def _stored(scp: RunningScp) -> list[str]:
    return sorted(p.name for p in scp.output_dir.rglob("*.dcm"))


@pytest.mark.timeout(60)
def test_fail_first_is_shared_across_associations(scp_factory: Any) -> None:
    """--fail-status A700 --fail-first 2: C-STOREs 1 and 2 fail even on two associations."""
    scp = scp_factory("--fail-status", "A700", "--fail-first", "2")
    first = _associate(scp)
    statuses = [_status(first.send_c_store(_instance(1)))]
    first.release()
    second = _associate(scp)
    statuses += [_status(second.send_c_store(_instance(n))) for n in (2, 3, 4)]
    second.release()
    assert statuses == [0xA700, 0xA700, 0x0000, 0x0000]
    assert _stored(scp) == ["1.2.826.0.1.9.1.3.dcm", "1.2.826.0.1.9.1.4.dcm"]
    summary = scp.stop()
    assert "C-STORE requests: 4" in summary
    assert "Successful stores: 2" in summary
    assert "Failed stores: 2 (fault injection: 2)" in summary


@pytest.mark.timeout(60)
def test_fail_every_and_lying_success(scp_factory: Any) -> None:
    """--fail-every 3 hits stores 3 and 6; a 0000 fault answers success yet writes nothing."""
    scp = scp_factory("--fail-status", "C000", "--fail-every", "3")
    assoc = _associate(scp)
    statuses = [_status(assoc.send_c_store(_instance(n))) for n in range(1, 8)]
    assoc.release()
    assert statuses == [0, 0, 0xC000, 0, 0, 0xC000, 0]
    assert len(_stored(scp)) == 5

    liar = scp_factory("--fail-status", "0000")
    assoc = _associate(liar)
    assert _status(assoc.send_c_store(_instance(1))) == 0x0000
    assoc.release()
    assert _stored(liar) == []
    assert "Successful stores: 0" in liar.stop()


@pytest.mark.timeout(60)
def test_abort_after_gives_an_empty_response_then_a_dead_association(scp_factory: Any) -> None:
    """--abort-after 2: two successes, then an empty response (no Status) and an abort."""
    scp = scp_factory("--abort-after", "2")
    assoc = _associate(scp)
    statuses = [_status(assoc.send_c_store(_instance(n))) for n in (1, 2, 3)]
    assert statuses == [0, 0, None]
    deadline = time.monotonic() + 5
    while not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert assoc.is_aborted
    assert _stored(scp) == ["1.2.826.0.1.9.1.1.dcm", "1.2.826.0.1.9.1.2.dcm"]
    scp.wait_for_log(r"C-STORE #3 .* association aborted")


@pytest.mark.timeout(60)
def test_abort_after_with_fail_first_lets_a_reconnecting_sender_finish(scp_factory: Any) -> None:
    """--abort-after 1 --fail-first 1: the first association aborts, the next one stores all."""
    scp = scp_factory("--abort-after", "1", "--fail-first", "1")
    first = _associate(scp)
    assert [_status(first.send_c_store(_instance(n))) for n in (1, 2)] == [0, None]
    second = _associate(scp)
    assert [_status(second.send_c_store(_instance(n))) for n in (2, 3, 4)] == [0, 0, 0]
    second.release()
    assert len(_stored(scp)) == 4
    summary = scp.stop()
    assert "Failed stores: 1 (fault injection: 1)" in summary


@pytest.mark.timeout(60)
def test_response_delay_outlasts_a_short_dimse_timeout(scp_factory: Any) -> None:
    """--response-delay 800: answered late (status 0); a 0.3 s DIMSE timeout sees nothing."""
    scp = scp_factory("--response-delay", "800", "-v")
    assoc = _associate(scp)
    t0 = time.monotonic()
    assert _status(assoc.send_c_store(_instance(1))) == 0
    assert time.monotonic() - t0 >= 0.8
    assoc.release()

    impatient = _associate(scp, dimse_timeout=0.3)
    t0 = time.monotonic()
    assert _status(impatient.send_c_store(_instance(2))) is None
    assert time.monotonic() - t0 < 0.8
    # The instance is stored before the delay: the sender just never hears about it.
    scp.wait_for_log(r"C-STORE #2 .* stored as")


@pytest.mark.timeout(60)
def test_refuse_rejects_permanently_with_no_reason(scp_factory: Any) -> None:
    """--refuse: A-ASSOCIATE-RJ result 1, source 1, reason 1, like storescp --refuse."""
    scp = scp_factory("--refuse")
    seen: list[tuple[int, int, int]] = []

    def on_recv(event: evt.Event) -> None:
        p = event.primitive
        if getattr(p, "result", None) is not None:
            seen.append((p.result, p.result_source, p.diagnostic))

    assoc = _associate(scp, evt_handlers=[(evt.EVT_ACSE_RECV, on_recv)])
    # Failed once under stress-ng (the state was not shown): say which way it went.
    state = {"established": assoc.is_established, "aborted": assoc.is_aborted}
    assert assoc.is_rejected, (state, seen, scp.log_text()[-2000:])
    assert seen == [(1, 1, 1)]
    summary = scp.stop()
    assert "Associations: 0 accepted, 1 rejected" in summary
