"""Duplicate SOP Instance UIDs (issue 7, fault 12): the first file with a UID is sent; a
later one with the same bytes is skipped as a duplicate, one with other bytes fails as a
conflict and is never sent, so the PACS's copy is not overwritten.

Real files, a moto S3 server, a real Redis ledger, DCMTK storescp (which overwrites a
duplicate, so a second send would show), and Orthanc fed by `migrator run` with real Celery
worker processes (its REST API shows which copy it holds).
"""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from migrator import duplicates, synth
from migrator.dicomfile import inspect_file
from migrator.errors import SourceError
from migrator.ledger import Ledger, PlannedFile, split_id
from migrator.outcomes import FileOutcome, State, StoreResult
from migrator.report import builder, text
from migrator.settings import Settings
from migrator.sources.base import SourceItem
from migrator.sources.filesystem import FileSource
from migrator.transfer.batch import run_batch
from migrator.transfer.runtime import Runtime
from tests.enginehelpers import (
    assert_invariant,
    common_args,
    finish,
    only_job,
    start_run,
    wait_until,
)
from tests.peers.counting_scp import counting_scp
from tests.peers.dcmtk import StoreScpPeer
from tests.peers.dicomcompare import compare_datasets
from tests.peers.orthanc import OrthancPeer
from tests.peers.redis import RedisPeer, redis_peer
from tests.peers.s3 import MotoS3
from tests.storehelpers import load_report, run_migrator, sop_uid
from workers.local import LocalWorkers

pytestmark = pytest.mark.timeout(300)


def workers(url: str, n: int, tmp: Path) -> LocalWorkers:
    return LocalWorkers(url, n, loglevel="INFO", logfile=str(tmp / f"w-{n}.log"))


# -- making duplicates ---------------------------------------------------------------------


def edited(src: Path, dst: Path) -> Path:
    """Same SOP Instance UID, same size, one pixel byte different."""
    raw = bytearray(src.read_bytes())
    raw[-1] ^= 0xFF  # the last bytes are Pixel Data (7FE0,0010) in the synthetic files
    dst.write_bytes(bytes(raw))
    return dst


def grown(src: Path, dst: Path) -> Path:
    """Same SOP Instance UID, one more element: another size."""
    ds = pydicom.dcmread(src)
    ds.ImageComments = "edited after export"
    ds.save_as(dst)
    assert dst.stat().st_size != src.stat().st_size
    return dst


def copied(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def local(path: Path, uid: str = "", size: int | None = None) -> duplicates.Copy:
    item = SourceItem(str(path), path.stat().st_size if size is None else size)
    return duplicates.Copy(FileSource(str(path)), item, uid)


@pytest.fixture
def four(tmp_path: Path) -> dict[str, Path]:
    a, b = synth.write_corpus(tmp_path / "src", count=2, size="tiny", seed=71)
    d = tmp_path / "in"
    d.mkdir()
    return {
        "A": copied(a, d / "1-a.dcm"),
        "A'": edited(a, d / "2-a-edited.dcm"),
        "A''": copied(a, d / "3-a-copy.dcm"),
        "B": copied(b, d / "4-b.dcm"),
    }


# -- the comparison and the reasons --------------------------------------------------------


def test_identical_edited_and_resized_copies_are_told_apart(
    four: dict[str, Path], tmp_path: Path
) -> None:
    a, edit, copy = four["A"], four["A'"], four["A''"]
    uid = sop_uid(a)
    resized = grown(a, tmp_path / "a-grown.dcm")
    assert duplicates.settle(local(copy, uid), local(a, uid)) == (
        State.SKIPPED,
        f"duplicate: same SOP Instance UID and identical content as {a}; not sent again",
    )
    conflict = (
        State.FAILED,
        f"conflict: SOP Instance UID {uid} is also in {a} with different content; not sent, "
        "so the copy at the PACS is not overwritten",
    )
    assert duplicates.settle(local(edit, uid), local(a, uid)) == conflict
    # The same file given twice (`store` with the file and its folder) is not compared.
    assert duplicates.settle(local(a, uid), local(a, uid)) == (
        State.SKIPPED,
        duplicates.LISTED_TWICE,
    )
    assert duplicates.settle(local(resized, uid), local(a, uid)) == conflict
    # Sizes that differ are never read: an owner that is gone still compares as different.
    gone = local(tmp_path / "gone.dcm", uid, size=resized.stat().st_size + 1)
    assert duplicates.settle(local(resized, uid), gone)[1].startswith("conflict: ")  # type: ignore[index]


def same_size_edit(src: Path, dst: Path, where: str) -> Path:
    """Same SOP Instance UID and size as ``src``, one difference: ``header``, the Patient's
    Name (same length, through pydicom); otherwise one byte flipped at ``where`` = ``middle``
    (half way) or ``chunk:N`` (byte N, e.g. inside the first full 1 MiB chunk)."""
    if where == "header":
        ds = pydicom.dcmread(src)
        name = str(ds.PatientName)
        ds.PatientName = "".join("Y" if c == "X" else "X" for c in name)  # same length
        ds.save_as(dst)
    else:
        raw = bytearray(src.read_bytes())
        at = len(raw) // 2 if where == "middle" else int(where.split(":")[1])
        raw[at] ^= 0x01
        dst.write_bytes(bytes(raw))
    assert dst.stat().st_size == src.stat().st_size
    assert dst.read_bytes()[-64:] == src.read_bytes()[-64:]  # the tails are the same
    return dst


@pytest.mark.parametrize(
    ("pixels", "where"),
    [
        ((64, 64), "header"),
        ((64, 64), "middle"),
        # 1024 x 1300 x 16 bits: ~2.7 MB, two full 1 MiB chunks and a partial one
        ((1024, 1300), "header"),
        ((1024, 1300), "middle"),  # in the second full chunk
        ((1024, 1300), f"chunk:{duplicates.CHUNK - 1}"),  # the last byte of the first one
        ((1024, 1300), f"chunk:{2 * duplicates.CHUNK + 7}"),  # early in the partial one
    ],
    ids=[
        "tiny-header",
        "tiny-middle",
        "big-header",
        "big-middle",
        "big-end-of-chunk-1",
        "big-partial-chunk",
    ],
)
def test_same_size_copies_that_differ_before_their_end_are_conflicts(
    tmp_path: Path, pixels: tuple[int, int], where: str
) -> None:
    """Same UID, same size, same tail, different content: a conflict, never a duplicate
    (skipping it would lose the edited copy silently). Reading the other way round too."""
    rows, cols = pixels
    (a,) = synth.write_corpus(tmp_path / "src", count=1, rows=rows, cols=cols, seed=72)
    b = same_size_edit(a, tmp_path / "edited.dcm", where)
    uid = sop_uid(a)
    assert sop_uid(b) == uid
    assert duplicates.settle(local(b, uid), local(a, uid)) == (
        State.FAILED,
        duplicates.conflict_reason(uid, str(a)),
    )
    assert not duplicates.same_content(local(a, uid), local(b, uid))
    twin = copied(a, tmp_path / "twin.dcm")
    assert duplicates.same_content(local(twin, uid), local(a, uid))


def test_an_owner_that_cannot_be_read_holds_the_file_back_and_an_unreadable_file_raises(
    four: dict[str, Path],
) -> None:
    a, copy = four["A"], four["A''"]
    uid = sop_uid(a)
    a.unlink()  # the first file is gone since it was sent
    gone = duplicates.Copy(FileSource(str(a)), SourceItem(str(a), 0), uid)
    verdict = duplicates.settle(local(copy, uid), gone)
    assert verdict is not None
    state, reason = verdict
    assert state is State.FAILED
    assert reason.startswith(
        f"conflict: SOP Instance UID {uid} is also in {a}, which cannot be read"
    )
    assert reason.endswith("not sent, so the copy at the PACS is not overwritten")
    with pytest.raises(SourceError):  # this file itself is gone: it fails as sending would
        duplicates.settle(gone, local(copy, uid))


def test_an_owner_whose_uid_is_unknown_is_asked_its_header_when_the_bytes_differ(
    four: dict[str, Path],
) -> None:
    """The engine's index matches 80 bits of a hash: an owner planned from a manifest without
    UIDs is read for its UID before a difference counts as a conflict."""
    a, edit, b = four["A"], four["A'"], four["B"]
    # Same UID in the header: a conflict.
    verdict = duplicates.settle(local(edit, sop_uid(a)), local(a, ""))
    assert verdict is not None and verdict[0] is State.FAILED
    # Another UID (a hash collision): not a duplicate at all, send it.
    assert duplicates.settle(local(b, sop_uid(b)), local(a, "")) is None
    # A planned UID that differs says so without reading anything.
    assert duplicates.settle(local(b, sop_uid(b)), local(a, sop_uid(a))) is None
    # Identical bytes need no header.
    assert duplicates.settle(local(four["A''"], sop_uid(a)), local(a, ""))[0] is State.SKIPPED  # type: ignore[index]


def test_sizes_unknown_to_the_plan_are_compared_once_the_files_are_open(
    four: dict[str, Path], tmp_path: Path
) -> None:
    """A file planned from a manifest has no size yet (0): files of different sizes are
    still told apart, by the sizes of the open files."""
    a = four["A"]
    uid = sop_uid(a)
    resized = grown(a, tmp_path / "a-grown.dcm")
    assert duplicates.settle(local(resized, uid, size=0), local(a, uid, size=0)) == (
        State.FAILED,
        duplicates.conflict_reason(uid, str(a)),
    )


def test_the_comparison_closes_both_files(four: dict[str, Path]) -> None:
    """Every file the comparison opens is closed when it ends (a job compares thousands):
    an unclosed one would show as a ResourceWarning when it is freed."""
    a, edit, copy = four["A"], four["A'"], four["A''"]
    uid = sop_uid(a)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        assert duplicates.same_content(local(copy, uid), local(a, uid))
        assert not duplicates.same_content(local(edit, uid), local(a, uid))
        gc.collect()
    assert [w for w in seen if issubclass(w.category, ResourceWarning)] == []


def test_a_file_whose_size_the_system_does_not_report_is_compared_by_its_bytes(
    tmp_path: Path,
) -> None:
    """Some file systems (procfs here; FUSE mounts, pipes) report size 0: the comparison
    goes by what is read, so an empty file is not "the same" as one that has bytes."""
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    procfs = Path("/proc/self/stat")
    assert procfs.stat().st_size == 0 and procfs.read_bytes()
    assert not duplicates.same_content(local(procfs, size=0), local(empty, size=0))
    assert not duplicates.same_content(local(empty, size=0), local(procfs, size=0))


def test_a_read_error_mid_file_names_the_file_that_failed(tmp_path: Path) -> None:
    """An I/O error while reading (not at open: /proc/self/mem opens, then reading its
    first page fails with EIO): the candidate's own error propagates (the file fails as
    unreadable); the owner's holds the candidate back as a conflict that names it."""
    broken = Path("/proc/self/mem")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match="/proc/self/mem: cannot read"):
        duplicates.settle(local(broken, "1.2.3", size=0), local(empty, "1.2.3", size=0))
    state, reason = duplicates.settle(  # type: ignore[misc]
        local(empty, "1.2.3", size=0), local(broken, "1.2.3", size=0)
    )
    assert state is State.FAILED
    assert reason == duplicates.unreadable_owner_reason(
        "1.2.3", str(broken), "/proc/self/mem: cannot read: Input/output error"
    )


def test_s3_objects_compare_in_memory_and_spooled(moto_s3: MotoS3, four: dict[str, Path]) -> None:
    bucket = moto_s3.create_bucket()
    for name in ("A", "A'", "A''"):
        moto_s3.put(bucket, name, four[name].read_bytes())
    uid = sop_uid(four["A"])
    for threshold in (8 * 1024 * 1024, 0):  # objects read into memory, then spooled to disk
        source = moto_s3.source(f"s3://{bucket}/", memory_threshold=threshold)
        items = {i.uri.rsplit("/", 1)[1]: i for i in source.iter_items()}

        def s3(name: str, source: Any = source, items: dict[str, SourceItem] = items) -> Any:
            return duplicates.Copy(source, items[name], uid)

        assert duplicates.settle(s3("A''"), s3("A")) == (
            State.SKIPPED,
            duplicates.duplicate_reason(f"s3://{bucket}/A"),
        )
        assert duplicates.settle(s3("A'"), s3("A")) == (
            State.FAILED,
            duplicates.conflict_reason(uid, f"s3://{bucket}/A"),
        )


def test_comparing_two_2_gib_files_stays_flat_in_memory(tmp_path: Path) -> None:
    """Two sparse 2 GiB files that differ in their last byte, compared in a fresh process:
    its peak RSS grows by the two 1 MiB buffers, not by the files."""
    size = 2 * 1024**3
    for name in ("big1", "big2"):
        with open(tmp_path / name, "wb") as f:
            f.truncate(size)
    with open(tmp_path / "big2", "r+b") as f:
        f.seek(size - 1)
        f.write(b"\x01")
    code = f"""
import resource
from migrator import duplicates
from migrator.sources.base import SourceItem
from migrator.sources.filesystem import FileSource
def copy(name):
    path = {str(tmp_path)!r} + "/" + name
    return duplicates.Copy(FileSource(path), SourceItem(path, {size}), "1.2.3")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert not duplicates.same_content(copy("big1"), copy("big2"))
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    before_kb, after_kb = map(int, out.stdout.split())
    assert after_kb - before_kb < 8 * 1024, (before_kb, after_kb)  # two 1 MiB buffers


def test_the_report_groups_conflicts_and_duplicates_on_their_own() -> None:
    result = StoreResult("pacs:104", started=1.0, finished=2.0)
    for n in range(3):
        reason = duplicates.conflict_reason(f"1.2.{n}", f"/in/{n}.dcm")
        result.outcomes.append(FileOutcome(f"/in/{n}-edited.dcm", State.FAILED, reason))
    reason = duplicates.duplicate_reason("/in/0.dcm")
    result.outcomes.append(FileOutcome("/in/0-copy.dcm", State.SKIPPED, reason))
    result.outcomes.append(
        FileOutcome("/in/x.dcm", State.FAILED, "0xA900 Dataset mismatch", 0xA900, attempts=1)
    )
    data = builder.from_store_result(result)
    groups = {(g.code, g.count): dict(g.reasons) for g in data.failure_groups()}
    assert groups[("-", 3)] == {duplicates.CONFLICT_GROUP: 3}
    assert groups[("-", 1)] == {duplicates.DUPLICATE_GROUP: 1}
    out = text.render(data)
    assert f"       3  {duplicates.CONFLICT_GROUP}" in out
    assert f"       1  {duplicates.DUPLICATE_GROUP}" in out
    # Each file's own line still names the other file and the UID.
    assert f"✗ /in/1-edited.dcm: failed: {duplicates.conflict_reason('1.2.1', '/in/1.dcm')}" in out
    assert data.invariant_holds


# -- `migrator store` ----------------------------------------------------------------------


def test_store_sends_the_first_skips_the_identical_copy_and_fails_the_conflict(
    four: dict[str, Path], storescp: StoreScpPeer, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    proc = run_migrator(
        "store",
        "--host",
        "127.0.0.1",
        "--port",
        storescp.port,
        "--called-ae",
        "STORESCP",
        "--dir",
        four["A"].parent,
        "--report",
        report,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a file failed: exit 1
    # storescp overwrites a second instance with the same UID: A' never arrived.
    received = {sop_uid(p): p for p in storescp.received_files()}
    assert set(received) == {sop_uid(four["A"]), sop_uid(four["B"])}
    got = pydicom.dcmread(received[sop_uid(four["A"])])
    assert got.PixelData == pydicom.dcmread(four["A"]).PixelData
    assert got.PixelData != pydicom.dcmread(four["A'"]).PixelData
    data = load_report(report)
    assert (data["totals"]["stored"], data["totals"]["failed"], data["totals"]["skipped"]) == (
        2,
        1,
        1,
    )
    files = {Path(f["uri"]).name: f for f in data["files"]}
    a = str(four["A"])
    assert files["3-a-copy.dcm"]["state"] == "skipped"
    assert files["3-a-copy.dcm"]["reason"] == duplicates.duplicate_reason(a)
    assert files["2-a-edited.dcm"]["state"] == "failed"
    assert files["2-a-edited.dcm"]["reason"] == duplicates.conflict_reason(sop_uid(four["A"]), a)
    assert files["2-a-edited.dcm"]["attempts"] == 0
    assert duplicates.CONFLICT_GROUP in proc.stdout


def test_store_fails_a_same_size_copy_edited_in_its_header_and_keeps_the_first(
    storescp: StoreScpPeer, tmp_path: Path
) -> None:
    """A re-export that changed only the Patient's Name (same length, same size, same
    pixels): `store` sends the first file, fails the second as a conflict and does not send
    it, so the receiver holds the first one's name."""
    (a,) = synth.write_corpus(tmp_path / "src", count=1, seed=73)
    folder = tmp_path / "in"
    folder.mkdir()
    first = copied(a, folder / "1-first.dcm")
    second = same_size_edit(a, folder / "2-renamed.dcm", "header")
    report = tmp_path / "report.json"
    proc = run_migrator(
        "store",
        "--host",
        "127.0.0.1",
        "--port",
        storescp.port,
        "--called-ae",
        "STORESCP",
        "--dir",
        folder,
        "--report",
        report,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (received,) = storescp.received_files()
    assert pydicom.dcmread(received).PatientName == pydicom.dcmread(first).PatientName
    assert pydicom.dcmread(received).PatientName != pydicom.dcmread(second).PatientName
    files = {Path(f["uri"]).name: f for f in load_report(report)["files"]}
    assert files["1-first.dcm"]["state"] == "stored"
    assert (files["2-renamed.dcm"]["state"], files["2-renamed.dcm"]["attempts"]) == ("failed", 0)
    assert files["2-renamed.dcm"]["reason"] == duplicates.conflict_reason(sop_uid(a), str(first))


# -- the engine: the batch runner in-process -----------------------------------------------


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisPeer]:
    with redis_peer() as peer:
        yield peer


def _plan(ledger: Ledger, batch_id: str, paths: list[Path], *, manifest: bool) -> None:
    files = []
    for p in paths:
        if manifest:  # as planned from a manifest: no header read yet
            files.append(PlannedFile(str(p), 0, "", "", "", "", ""))
            continue
        h = inspect_file(str(p))
        files.append(
            PlannedFile(
                str(p),
                h.size,
                "",
                h.sop_class_uid,
                h.sop_instance_uid,
                h.transfer_syntax,
                h.study_uid,
            )
        )
    assert ledger.add_batch(batch_id, files)


@pytest.mark.parametrize("manifest", [False, True], ids=["listed", "manifest"])
def test_a_forced_hash_collision_sends_both_files(
    shared_redis: RedisPeer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manifest: bool
) -> None:
    """Every UID hashes alike: the index names an owner for B, whose UID differs; the
    batch sees it (from the plan, or from the owner's header when the plan has no UID)
    and sends B."""
    import migrator.ledger.core as ledger_module

    monkeypatch.setattr(ledger_module, "uid_key", lambda uid: b"0000" + b"\x01" * 8)
    a, b = synth.write_corpus(tmp_path / "in", count=2, size="tiny", seed=72)
    with counting_scp() as scp:
        ledger = Ledger(shared_redis.client(), f"job-{tmp_path.name}")
        ledger.client.flushall()
        ledger.create(Settings("127.0.0.1", scp.port, "COUNTING").to_dict())
        _plan(ledger, "b1", [a], manifest=manifest)
        _plan(ledger, "b2", [b], manifest=manifest)
        runtime = Runtime(ledger.client)
        first = run_batch(ledger, "b1", runtime, task_id="t1")
        second = run_batch(ledger, "b2", runtime, task_id="t2")
        runtime.close_all()
    assert (first.stored, second.stored, second.conflicts, second.duplicates) == (1, 1, 0, 0)
    assert scp.distinct == 2
    assert ledger.uid_owner(sop_uid(b)) == "b1:0"  # the collision itself


def test_duplicates_within_one_batch_and_a_redelivery(
    shared_redis: RedisPeer, four: dict[str, Path]
) -> None:
    paths = [four[k] for k in ("A", "A'", "A''", "B")]
    with counting_scp() as scp:
        ledger = Ledger(shared_redis.client(), "job-one-batch")
        ledger.client.flushall()
        ledger.create(Settings("127.0.0.1", scp.port, "COUNTING").to_dict())
        _plan(ledger, "b1", paths, manifest=True)
        runtime = Runtime(ledger.client)
        summary = run_batch(ledger, "b1", runtime, task_id="t1")
        assert (summary.stored, summary.duplicates, summary.conflicts) == (2, 1, 1)
        # Delivered again: A is its UID's owner and stored; A' and A'' keep their outcomes
        # (a delivery sends and settles only files without one: `retry` puts failed files
        # back in flight), nothing is sent.
        again = run_batch(ledger, "b1", runtime, task_id="t1")
        runtime.close_all()
    assert (again.skipped_already_stored, again.duplicates, again.conflicts) == (2, 0, 0)
    assert scp.total == 2 and scp.distinct == 2
    counts = ledger.counts()
    assert (counts["stored"], counts["failed"], counts["skipped"], counts["in_flight"]) == (
        2,
        1,
        1,
        0,
    )
    reasons = {Path(o.uri).name: o.reason for _, o, _ in ledger.iter_outcomes()}
    assert reasons["2-a-edited.dcm"] == duplicates.conflict_reason(
        sop_uid(four["A"]), str(four["A"])
    )
    assert reasons["3-a-copy.dcm"] == duplicates.duplicate_reason(str(four["A"]))


# -- the engine: `migrator run` with Celery worker processes into Orthanc --------------------


def _engine_tree(tmp: Path) -> dict[str, Path]:
    """24 distinct files, then (listed after them, so in later batches) an identical copy
    of A, A with one pixel byte changed and C with one more element."""
    corpus = synth.write_corpus(tmp / "in", count=24, size="tiny", seed=73)
    extra = tmp / "in" / "zz"
    extra.mkdir()
    a, c = corpus[2], corpus[9]
    return {
        "A": a,
        "C": c,
        "A''": copied(a, extra / "1-a-copy.dcm"),
        "A'": edited(a, extra / "2-a-edited.dcm"),
        "C'": grown(c, extra / "3-c-grown.dcm"),
    }


def _check_job(
    ledger: Ledger, report: Path, orthanc: OrthancPeer, tree: dict[str, Path]
) -> dict[str, Any]:
    """What every engine run below must show: counts, reasons, owners, Orthanc's copies."""
    counts = assert_invariant(ledger)
    assert (counts["planned"], counts["stored"], counts["failed"], counts["skipped"]) == (
        27,
        24,
        2,
        1,
    )
    data = load_report(report)
    files = {f["uri"]: f for f in data["files"]}
    a, c = str(tree["A"]), str(tree["C"])
    uid_a, uid_c = sop_uid(tree["A"]), sop_uid(tree["C"])
    assert files[a]["state"] == files[c]["state"] == "stored"
    assert (files[str(tree["A''"])]["state"], files[str(tree["A''"])]["reason"]) == (
        "skipped",
        duplicates.duplicate_reason(a),
    )
    assert (files[str(tree["A'"])]["state"], files[str(tree["A'"])]["reason"]) == (
        "failed",
        duplicates.conflict_reason(uid_a, a),
    )
    assert (files[str(tree["C'"])]["state"], files[str(tree["C'"])]["reason"]) == (
        "failed",
        duplicates.conflict_reason(uid_c, c),
    )
    # The duplicates sat in other batches than the files that own their UIDs.
    owner_a, owner_c = ledger.uid_owner(uid_a), ledger.uid_owner(uid_c)
    assert owner_a and owner_c
    by_uri = {p.uri: p.file_id for _, plan, _, _ in ledger.iter_batches() for p in plan}
    assert by_uri[a] == owner_a and by_uri[c] == owner_c
    for dup in ("A'", "A''"):
        assert split_id(by_uri[str(tree[dup])])[0] != split_id(owner_a)[0]
    assert split_id(by_uri[str(tree["C'"])])[0] != split_id(owner_c)[0]
    # Orthanc holds one instance per UID, and for A and C the first files' contents.
    assert orthanc.count_instances() == 24
    for name, uid in (("A", uid_a), ("C", uid_c)):
        held = orthanc.find_instance(uid)
        assert held is not None
        compare_datasets(tree[name], orthanc.get_file(held))
    return data


def _outcome_strings(ledger: Ledger) -> dict[bytes, bytes]:
    keys = ledger.client.scan_iter(match=ledger.keys.outcomes("*"))
    return {k: ledger.client.get(k) or b"" for k in keys}


def test_engine_sends_each_uid_once_and_reports_duplicates_and_conflicts(
    tmp_path: Path, redis_server: RedisPeer, orthanc: OrthancPeer
) -> None:
    tree = _engine_tree(tmp_path)
    report = tmp_path / "report.json"
    args = [
        tmp_path / "in",
        *common_args(("127.0.0.1", orthanc.dicom_port), "ORTHANC"),
        "--redis-url",
        redis_server.url,
        "--batch-files",
        "4",
        "--report",
        report,
    ]
    with workers(redis_server.url, 2, tmp_path):
        code, out = finish(start_run(*args))
        assert code == 1, out  # conflicts are failed files: exit 1, as `store`
        ledger = only_job(redis_server.client())
        data = _check_job(ledger, report, orthanc, tree)
        groups = {g["reasons"][0]["reason"]: g["count"] for g in data["failures"]}
        assert groups[duplicates.CONFLICT_GROUP] == 2
        assert groups[duplicates.DUPLICATE_GROUP] == 1

        # The same command again: every file is planned already, nothing is sent again.
        before = (ledger.counts(), ledger.timeline(), _outcome_strings(ledger))
        code, out = finish(start_run(*args))
        assert code == 1, out
        time.sleep(1)
        assert (ledger.counts(), ledger.timeline(), _outcome_strings(ledger)) == before
        assert orthanc.count_instances() == 24

        # `retry`: the conflicts are compared again and fail again for the same reason.
        retried = run_migrator("retry", ledger.job_id, "--redis-url", redis_server.url)
        assert retried.returncode == 0, retried.stderr
        assert "2 failed files" in retried.stdout
        wait_until(lambda: ledger.counts()["in_flight"] == 0, 60, "the retried files")
        counts = assert_invariant(ledger)
        assert (counts["stored"], counts["failed"], counts["skipped"]) == (24, 2, 1)
        reasons = {o.uri: (o.state, o.reason) for _, o, _ in ledger.iter_outcomes()}
        a = str(tree["A"])
        assert reasons[str(tree["A'"])] == (
            State.FAILED,
            duplicates.conflict_reason(sop_uid(tree["A"]), a),
        )
        # Once A' is made identical to A (someone fixed it), a retry skips it as a duplicate.
        copied(tree["A"], tree["A'"])
        retried = run_migrator("retry", ledger.job_id, "--redis-url", redis_server.url)
        assert retried.returncode == 0, retried.stderr
        wait_until(lambda: ledger.counts()["in_flight"] == 0, 60, "the retried files")
    counts = assert_invariant(ledger)
    assert (counts["stored"], counts["failed"], counts["skipped"]) == (24, 1, 2)
    reasons = {o.uri: (o.state, o.reason) for _, o, _ in ledger.iter_outcomes()}
    assert reasons[str(tree["A'"])] == (State.SKIPPED, duplicates.duplicate_reason(a))
    assert orthanc.count_instances() == 24
    compare_datasets(tree["A"], orthanc.get_file(orthanc.find_instance(sop_uid(tree["A"])) or ""))


def test_engine_finds_the_same_conflicts_in_a_job_planned_from_a_manifest(
    tmp_path: Path, redis_server: RedisPeer, orthanc: OrthancPeer
) -> None:
    """A manifest without UIDs: workers learn each UID from the header just before sending,
    and an owner's UID from its header when its content differs."""
    tree = _engine_tree(tmp_path)
    manifest = tmp_path / "manifest.ndjson"
    paths = sorted(p for p in (tmp_path / "in").rglob("*.dcm"))
    # Owners first, then the rest in an order that spreads the duplicates over the batches.
    order = [tree["A"], tree["C"], *(p for p in paths if p not in (tree["A"], tree["C"]))]
    manifest.write_text("".join(json.dumps({"uri": str(p)}) + "\n" for p in order))
    report = tmp_path / "report.json"
    with workers(redis_server.url, 2, tmp_path):
        code, out = finish(
            start_run(
                "--manifest",
                manifest,
                *common_args(("127.0.0.1", orthanc.dicom_port), "ORTHANC"),
                "--redis-url",
                redis_server.url,
                "--batch-files",
                "4",
                "--report",
                report,
            )
        )
    assert code == 1, out
    _check_job(only_job(redis_server.client()), report, orthanc, tree)
