"""The ledger on a real redis-server: idempotent outcomes, counters, timeline, batches."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from migrator.errors import JobGone
from migrator.ledger import Ledger, PlannedFile, list_jobs
from migrator.outcomes import FileOutcome, State
from tests.peers.redis import RedisPeer, redis_peer


def planned(n: int, study: str = "1.2.3") -> PlannedFile:
    return PlannedFile(
        f"/archive/{n:05d}.dcm",
        1000 + n,
        "v",
        "1.2.840.10008.5.1.4.1.1.2",
        f"1.2.3.4.{n}",
        "1.2.840.10008.1.2.1",
        study,
    )


def outcome(f: PlannedFile, state: State, reason: str = "") -> FileOutcome:
    stored = state is State.STORED
    return FileOutcome(
        f.uri,
        state,
        reason,
        0 if stored else 0xA700,
        sop_class_uid=f.sop_class_uid,
        sop_instance_uid=f.sop_instance_uid,
        ts_original=f.transfer_syntax,
        ts_sent=f.transfer_syntax,
        bytes=f.size if stored else 0,
        attempts=1,
    )


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisPeer]:
    with redis_peer() as peer:
        yield peer


@pytest.fixture
def ledger(shared_redis: RedisPeer) -> Ledger:
    shared_redis.client().flushall()
    led = Ledger(shared_redis.client(), "job-test")
    assert led.create({"host": "pacs", "port": 104, "called_ae": "PACS"})
    return led


def test_create_is_idempotent_and_listed(ledger: Ledger) -> None:
    assert not ledger.create({"host": "other"})
    assert ledger.config()["host"] == "pacs"
    assert list_jobs(ledger.client) == ["job-test"]


def test_batches_plan_once_and_count(ledger: Ledger) -> None:
    files = [planned(i) for i in range(5)]
    uris = [f.uri for f in files]
    assert ledger.filter_unplanned(uris) == [True] * 5
    written = ledger.add_batch("b1", files)
    assert [f.file_id for f in written] == [f"b1:{i}" for i in range(5)]
    assert ledger.filter_unplanned([*uris, "/archive/new.dcm"]) == [False] * 5 + [True]
    assert ledger.batch("b1") == written
    # ids beyond the batch (just past its end too) or of no batch are left out
    assert ledger.files(["b1:3", "b1:0", "b1:5", "b1:99", "zz:1"]) == [written[3], written[0]]
    assert ledger.unenqueued_batches() == ["b1"]
    ledger.mark_enqueued("b1")
    assert ledger.unenqueued_batches() == []
    counts = ledger.counts()
    assert counts["planned"] == 5 and counts["in_flight"] == 5
    assert list(ledger.iter_in_flight()) == written


def test_redelivered_outcomes_never_double_count(ledger: Ledger) -> None:
    files = ledger.add_batch("b1", [planned(i) for i in range(4)])
    now = time.time()
    first = [(f.file_id, outcome(f, State.STORED), now) for f in files[:3]]
    assert ledger.record_many(first, worker="w1") == 3
    # The same batch delivered again (worker killed before the ack) records the same files.
    assert ledger.record_many(first, worker="w2") == 0
    # A late transient failure of a stored file must not undo the store.
    late = [(files[0].file_id, outcome(files[0], State.FAILED, "0xA700"), now)]
    assert ledger.record_many(late) == 0
    ledger.record_many([(files[3].file_id, outcome(files[3], State.FAILED, "x"), now)])
    counts = ledger.counts()
    assert (counts["stored"], counts["failed"], counts["in_flight"]) == (3, 1, 0)
    assert counts["bytes_stored"] == sum(f.size for f in files[:3])
    assert ledger.stored_ids([f.file_id for f in files]) == {f.file_id for f in files[:3]}
    assert ledger.failed_ids() == [files[3].file_id]
    # The timeline counts each stored file once, in the second it finished.
    assert ledger.timeline() == {int(now): (3, counts["bytes_stored"])}


def test_outcomes_out_of_order_and_with_gaps(ledger: Ledger) -> None:
    files = ledger.add_batch("b1", [planned(i) for i in range(6)])
    now = time.time()
    entries = [(files[i].file_id, outcome(files[i], State.STORED), now) for i in (4, 1)]
    assert ledger.record_many(entries) == 2
    assert ledger.batch_states("b1") == ".s..s."
    assert {fid for fid, _, _ in ledger.iter_outcomes()} == {"b1:1", "b1:4"}
    # One pass gives every planned file once: settled with its outcome, or in flight.
    seen = [(p.file_id, o is not None) for p, o, _ in ledger.iter_files()]
    assert seen == [(f.file_id, i in (1, 4)) for i, f in enumerate(files)]


def test_a_report_read_while_files_settle_counts_each_file_once(ledger: Ledger) -> None:
    """A report of a running job (`run --timeout`): files settle while it is read."""
    from migrator.report.builder import from_ledger

    files = ledger.add_batch("b1", [planned(i) for i in range(4)])
    files += ledger.add_batch("b2", [planned(i) for i in range(4, 8)])
    settle = iter(files)
    real = ledger.iter_batches

    def settling(**kw: object):  # type: ignore[no-untyped-def]
        for row in real(**kw):  # type: ignore[arg-type]
            yield row
            # After each batch is read, one more file of the job gets its outcome.
            f = next(settle)
            ledger.record_many([(f.file_id, outcome(f, State.STORED), time.time())])

    ledger.iter_batches = settling  # type: ignore[method-assign]
    data = from_ledger(ledger)
    assert data.planned == 8, (data.planned, data.stored, data.in_flight)


def test_failed_then_stored_moves_counters(ledger: Ledger) -> None:
    [f] = ledger.add_batch("b1", [planned(1)])
    ledger.record_many([(f.file_id, outcome(f, State.FAILED, "x"), time.time())])
    assert ledger.reopen([f.file_id]) == 1
    assert ledger.counts()["in_flight"] == 1 and ledger.failed_ids() == []
    ledger.record_many([(f.file_id, outcome(f, State.STORED), time.time())])
    counts = ledger.counts()
    assert (counts["planned"], counts["stored"], counts["failed"]) == (1, 1, 0)


def test_a_stored_file_reopened_for_retry_missing_is_counted_once_when_stored_again(
    ledger: Ledger,
) -> None:
    """`retry --missing`: a stored file the destination lost goes back in flight with its
    count, bytes, warning flag and timeline second taken back (also when its time rounds up
    to the next second in the outcome line), and only stored files are reopened."""
    f, g, h = ledger.add_batch("b1", [planned(1), planned(2), planned(3)])
    first = outcome(f, State.STORED)
    first.warning = True
    ledger.record_many([(f.file_id, first, 1_000_000.996)])  # the line says 1000001.0
    ledger.record_many([(g.file_id, outcome(g, State.STORED), 1_000_002.5)])
    ledger.record_many([(h.file_id, outcome(h, State.FAILED, "x"), 1_000_002.5)])
    assert ledger.reopen_stored([f.file_id, h.file_id]) == 1  # the failed one is not stored
    counts = ledger.counts()
    assert (counts["stored"], counts["in_flight"], counts["warnings"]) == (1, 1, 0)
    assert counts["bytes_stored"] == g.size
    assert ledger.timeline() == {1_000_002: (1, g.size)}
    assert ledger.batch_states("b1") == ".sf"
    assert ledger.reopen_stored([f.file_id]) == 0  # in flight now: nothing to take back
    ledger.record_many([(f.file_id, outcome(f, State.STORED), 1_000_010.0)])
    counts = ledger.counts()
    assert (counts["planned"], counts["stored"], counts["failed"]) == (3, 2, 1)
    assert counts["bytes_stored"] == f.size + g.size
    assert ledger.timeline() == {1_000_002: (1, g.size), 1_000_010: (1, f.size)}


def test_a_redelivered_batch_that_stores_a_failed_file_moves_it_between_counters(
    ledger: Ledger,
) -> None:
    """Failed, then stored by a later delivery without a retry in between: the failure is
    taken back (count and failures set), the store counted once, with its bytes."""
    [f, g] = ledger.add_batch("b1", [planned(1), planned(2)])
    ledger.record_many([(f.file_id, outcome(f, State.FAILED, "x"), time.time())])
    ledger.record_many([(g.file_id, outcome(g, State.FAILED, "x"), time.time())])
    assert ledger.failed_ids() == ["b1:0", "b1:1"]
    ledger.record_many([(f.file_id, outcome(f, State.STORED), time.time())])
    counts = ledger.counts()
    assert (counts["stored"], counts["failed"], counts["in_flight"]) == (1, 1, 0)
    assert counts["bytes_stored"] == f.size
    assert ledger.failed_ids() == ["b1:1"]
    assert ledger.batch_states("b1") == "sf"


def test_warnings_and_transcoded_files_are_counted_each_once(ledger: Ledger) -> None:
    files = ledger.add_batch("b1", [planned(i) for i in range(6)])
    outcomes = [outcome(f, State.STORED) for f in files]
    for o, (warning, transcoded) in zip(
        outcomes, [(0, 0), (1, 0), (1, 0), (1, 1), (0, 1), (1, 0)], strict=True
    ):
        o.warning, o.transcoded = bool(warning), bool(transcoded)
    now = time.time()
    entries = [(f.file_id, o, now) for f, o in zip(files, outcomes, strict=True)]
    ledger.record_many(entries)
    ledger.record_many(entries)  # a redelivery changes nothing
    counts = ledger.counts()
    assert (counts["stored"], counts["warnings"], counts["transcoded"]) == (6, 4, 2)


def test_outcomes_for_a_job_planned_anew_are_refused_and_not_written(ledger: Ledger) -> None:
    """``created``: the job's stamp the worker read; a job since lost and planned again
    has another, and the worker's outcomes must not land in the new plan."""
    [f] = ledger.add_batch("b1", [planned(1)])
    stamp = ledger.meta()["created"]
    with pytest.raises(JobGone):
        ledger.record_many([(f.file_id, outcome(f, State.STORED), time.time())], created=stamp + 1)
    assert ledger.batch_states("b1") == "." and ledger.counts()["stored"] == 0
    ledger.record_many([(f.file_id, outcome(f, State.STORED), time.time())], created=stamp)
    assert ledger.counts()["stored"] == 1


def test_refused_at_plan_counts_once(ledger: Ledger) -> None:
    refused = [("/archive/README.txt", State.SKIPPED, "not DICOM")]
    assert ledger.add_refused(refused) == 1
    assert ledger.add_refused(refused) == 0
    counts = ledger.counts()
    assert (counts["planned"], counts["skipped"], counts["in_flight"]) == (1, 1, 0)
    assert ledger.unenqueued_batches() == []
    result = ledger.to_store_result("pacs:104")
    assert [(o.uri, o.state, o.reason, o.attempts) for o in result.outcomes] == [
        ("/archive/README.txt", State.SKIPPED, "not DICOM", 0)  # never sent: no attempt
    ]
    # one batch of their own, numbered like the planner's, with no size known
    [(fid, _, _)] = ledger.iter_outcomes()
    batch_id = fid.rpartition(":")[0]
    assert batch_id.startswith("p") and batch_id[1:].isdigit(), fid
    assert [(f.uri, f.size) for f in ledger.batch(batch_id)] == [("/archive/README.txt", 0)]


def test_outcomes_round_trip_into_the_report(ledger: Ledger) -> None:
    [f, g] = ledger.add_batch("b1", [planned(7), planned(8)])
    out = outcome(f, State.FAILED, "0xA700 Out of resources")
    out.attempts, out.seconds = 4, 0.012
    ok = outcome(g, State.STORED)
    ok.seconds, ok.warning = 0.003, True
    ok.status = 0xB000
    ledger.record_many([(f.file_id, out, 1000.5), (g.file_id, ok, 1001.25)], worker="host:1")
    back = {fid: (o, extra) for fid, o, extra in ledger.iter_outcomes()}
    assert back[f.file_id] == (out, {"at": 1000.5, "worker": "host:1", "planned": f})
    assert back[g.file_id][0] == ok


def test_deliveries_and_batch_lease(ledger: Ledger) -> None:
    assert ledger.deliveries("t") == 1
    assert ledger.deliveries("t") == 2
    ledger.delivery_done("t")
    assert ledger.deliveries("t") == 1
    assert ledger.claim_batch("b1", "me", 5)
    assert not ledger.claim_batch("b1", "other", 5)
    assert ledger.batch_holder("b1") == "me"
    assert not ledger.refresh_batch("b1", "other", 5)
    ledger.release_batch("b1", "other")  # not the holder: nothing happens
    assert ledger.batch_holder("b1") == "me"
    ledger.release_batch("b1", "me")
    assert ledger.claim_batch("b1", "other", 5)
    # the lease lasts ttl seconds (Redis PX: milliseconds), as claimed and as refreshed
    assert 4.0 < ledger.batch_lease_ttl("b1") <= 5.0
    assert ledger.refresh_batch("b1", "other", 60)
    assert 59.0 < ledger.batch_lease_ttl("b1") <= 60.0


def test_a_delivery_count_is_kept_for_a_week(ledger: Ledger) -> None:
    """Starts of a task are counted for 7 days (a poison batch is one that killed its
    worker three times, however far apart), then forgotten."""
    ledger.deliveries("t1")
    ttl = ledger.client.ttl(ledger.keys.deliveries("t1"))
    assert 7 * 24 * 3600 - 60 <= ttl <= 7 * 24 * 3600, ttl


def test_recording_the_last_file_of_a_batch_writes_nothing_past_it(ledger: Ledger) -> None:
    files = ledger.add_batch("b1", [planned(i) for i in range(3)])
    ledger.record_many([(files[2].file_id, outcome(files[2], State.STORED), time.time())])
    assert ledger.batch_states("b1") == "..s"


def test_outcomes_of_another_batch_use_their_own_plan(ledger: Ledger) -> None:
    """record_many's ``plan`` (the caller's batch, to save a read) is not used for the
    outcomes of another batch: each outcome line is written against its own file."""
    a = ledger.add_batch("a", [planned(1)])
    b = ledger.add_batch("b", [planned(2)])
    got = outcome(b[0], State.STORED)
    ledger.record_many([(b[0].file_id, got, 1000.0)], plan=a)
    back = {fid: o for fid, o, _ in ledger.iter_outcomes()}
    assert back == {b[0].file_id: got}


def test_memory_per_planned_file_is_small(ledger: Ledger) -> None:
    """The compact layout (docs/scale.md): what grows with every file is its packed plan,
    one state byte and one short outcome line. The dedup index is measured at a million
    files by bench/scale.py (its 65,536 buckets cost a fixed ~5 MB)."""
    import random

    rng = random.Random(7)

    def uid() -> str:
        return "2.25." + str(rng.getrandbits(120))  # as random as real UUID-derived UIDs

    client = ledger.client
    n, per_batch = 20_000, 200
    for b in range(n // per_batch):
        study = uid()
        files = [
            PlannedFile(
                f"/archive/2019/{b:04d}/IM{i:05d}.dcm",
                500_000 + i,
                "1700000000000000000",
                "1.2.840.10008.5.1.4.1.1.2",
                uid(),
                "1.2.840.10008.1.2.1",
                study,
            )
            for i in range(per_batch)
        ]
        written = ledger.add_batch(f"b{b:07d}", files)
        outs = []
        for f in written:
            o = outcome(f, State.STORED)
            o.seconds = rng.random() / 100
            outs.append((f.file_id, o, time.time()))
        ledger.record_many(outs, worker="worker-7f9c4d-abcde:12345")
    per_file: dict[str, float] = {}
    for kind in ("batch", "st", "out"):
        keys = list(client.scan_iter(match=f"*:{kind}:*", count=1000))
        per_file[kind] = sum(int(client.memory_usage(k) or 0) for k in keys) / n
    assert ledger.counts()["stored"] == n
    assert sum(per_file.values()) < 100, per_file
    # The URI dedup index holds, per file, a hash field and its batch's short id: its
    # 65,536 buckets cost a fixed few MB (bench/scale.py), not a copy of anything per file.
    buckets = list(client.scan_iter(match=ledger.keys.plan_bucket("*"), count=1000))
    per_uri = sum(int(client.memory_usage(k) or 0) for k in buckets) / n
    assert per_uri < 300, per_uri  # ~110 B here (key overhead of sparse buckets)


def test_a_batch_leaves_out_uris_planned_before_atomically(ledger: Ledger) -> None:
    first = ledger.add_batch("b1", [planned(1), planned(2)])
    # A re-plan (or a manifest repeating lines, also within one batch) adds only what is new.
    again = ledger.add_batch("b2", [planned(2), planned(3), planned(3), planned(4)])
    assert [f.uri for f in again] == [planned(3).uri, planned(4).uri]
    assert [f.file_id for f in again] == ["b2:0", "b2:1"]
    assert ledger.add_batch("b3", [planned(1)]) == []
    assert ledger.batch_ids() == ["b1", "b2"]
    assert ledger.counts()["planned"] == len(first) + len(again) == 4


def test_a_settled_batch_is_compacted_to_one_line_per_file(ledger: Ledger) -> None:
    files = ledger.add_batch("b1", [planned(i) for i in range(3)])
    now = time.time()
    ledger.record_many([(files[0].file_id, outcome(files[0], State.FAILED, "x"), now)])
    assert not ledger.compact_outcomes("b1")  # two files still in flight
    ledger.reopen([files[0].file_id])
    ledger.record_many(
        [(f.file_id, outcome(f, State.STORED), now) for f in files], worker="w1", plan=files
    )
    before = {fid: (o, e) for fid, o, e in ledger.iter_outcomes()}
    raw = ledger.client.get(ledger.keys.outcomes("b1")) or b""
    assert ledger.compact_outcomes("b1")
    after = ledger.client.get(ledger.keys.outcomes("b1")) or b""
    assert len(after) < len(raw) and after.count(b"\n") == 4  # one worker line + 3 files
    assert {fid: (o, e) for fid, o, e in ledger.iter_outcomes()} == before


def test_update_plan_keeps_ids_and_fills_what_headers_said(ledger: Ledger) -> None:
    bare = [planned(i) for i in range(2)]
    bare = [PlannedFile(f.uri, 0, "", "", "", "", "") for f in bare]
    files = ledger.add_batch("b1", bare)
    known = [
        PlannedFile(f.uri, 10, "", "1.2.3", f"1.2.3.{i}", "1.2.840.10008.1.2.1", "9", f.file_id)
        for i, f in enumerate(files)
    ]
    ledger.update_plan("b1", known)
    assert ledger.batch("b1") == known


def test_the_first_file_to_claim_a_uid_owns_it(ledger: Ledger) -> None:
    """The UID index (issue 7): one round trip per batch says, per file, which other file
    claimed its SOP Instance UID first; a batch delivered again finds itself as owner."""
    b1 = ledger.add_batch("b1", [planned(i) for i in range(3)])
    # b2: file 0 has b1:1's UID, files 1 and 2 share a new one, file 3 is new.
    again = [
        PlannedFile("/other/a.dcm", 1, "v", "1.2", "1.2.3.4.1", "1.2.840.10008.1.2.1", "9"),
        PlannedFile("/other/b.dcm", 1, "v", "1.2", "1.2.3.4.77", "1.2.840.10008.1.2.1", "9"),
        PlannedFile("/other/c.dcm", 1, "v", "1.2", "1.2.3.4.77", "1.2.840.10008.1.2.1", "9"),
        PlannedFile("/other/d.dcm", 1, "v", "1.2", "1.2.3.4.78", "1.2.840.10008.1.2.1", "9"),
    ]
    b2 = ledger.add_batch("b2", again)
    assert ledger.claim_uids(b1) == ["", "", ""]
    assert ledger.claim_uids(b2) == ["b1:1", "", "b2:1", ""]
    # Delivered again (a killed worker, `retry`): the owners are themselves.
    assert ledger.claim_uids(b1) == ["", "", ""]
    assert ledger.claim_uids(b2[1:]) == ["", "b2:1", ""]
    assert ledger.uid_owner("1.2.3.4.1") == "b1:1"
    assert ledger.uid_owner("1.2.3.4.77") == "b2:1"
    assert ledger.uid_owner("1.2.3.4.999") is None
    assert ledger.claim_uids([]) == []
    # Fields are 8 binary bytes in 65,536 buckets keyed like the URI dedup index.
    keys = sorted(ledger.client.scan_iter(match=ledger.keys.uid_bucket("*")))
    assert len(keys) == 5
    for key in keys:
        suffix = key.decode().rsplit(":", 1)[1]
        assert len(suffix) == 4 and int(suffix, 16) >= 0
        for field in ledger.client.hkeys(key):
            assert len(field) == 8


def test_a_uid_is_handed_over_only_from_the_owner_named(ledger: Ledger) -> None:
    """take_over_uid: a later copy takes a UID over from its owner (a first copy that
    failed); again, it is still the owner; a third copy naming the old owner cannot take
    it from the new one; a UID nobody holds is taken at once."""
    uid = "1.2.3.4.500"
    first, second, third = ledger.add_batch(
        "b1",
        [
            PlannedFile(f"/in/{n}.dcm", 1, "v", "1.2", uid, "1.2.840.10008.1.2.1", "9")
            for n in range(3)
        ],
    )
    assert ledger.claim_uids([first]) == [""]
    assert ledger.take_over_uid(second, first.file_id)
    assert ledger.uid_owner(uid) == second.file_id
    assert ledger.take_over_uid(second, first.file_id)  # owner already: still True
    assert not ledger.take_over_uid(third, first.file_id)  # the owner is no longer first
    assert ledger.uid_owner(uid) == second.file_id
    [lonely] = ledger.add_batch("b2", [planned(501)])
    assert ledger.take_over_uid(lonely, "b9:9")  # nobody held it
    assert ledger.uid_owner(lonely.sop_instance_uid) == lonely.file_id


def test_planner_file_ids_are_stored_as_one_integer_and_come_back_whole(ledger: Ledger) -> None:
    """``b0000123:17`` takes 5 bytes of a listpack as 123 << 14 | 17 (12 as text)."""
    [a] = ledger.add_batch("b0000123", [planned(1)])
    again = PlannedFile("/copy/1.dcm", 1, "", "", a.sop_instance_uid, "", "")
    [b] = ledger.add_batch("b0000124", [planned(2), again])[1:]
    assert ledger.claim_uids([a]) == [""]
    assert ledger.claim_uids([b]) == ["b0000123:0"]
    assert ledger.uid_owner(a.sop_instance_uid) == "b0000123:0"
    [key] = ledger.client.scan_iter(match=ledger.keys.uid_bucket("*"))
    assert ledger.client.hvals(key) == [str(123 << 14).encode()]
    assert ledger.client.object("encoding", key) == b"listpack"
    # Beyond 9,999,999 batches, and ids of another form, round-trip too.
    for fid in ("b12345678:9999", "b7:3"):
        f = PlannedFile("/x", 1, "", "", f"9.{fid}", "", "", fid)
        assert ledger.claim_uids([f]) == [""]
        assert ledger.uid_owner(f"9.{fid}") == fid


def test_a_forced_hash_collision_names_the_other_file_as_owner(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two different UIDs whose hashes meet: the index cannot tell them apart, so it names
    the owner and the caller compares the UIDs (migrator/transfer/claims.py sends such a file)."""
    import migrator.ledger.core as ledger_module

    monkeypatch.setattr(ledger_module, "uid_key", lambda uid: b"abcd" + b"\x00" * 8)
    [a] = ledger.add_batch("b1", [planned(1)])
    [b] = ledger.add_batch("b2", [planned(2)])
    assert a.sop_instance_uid != b.sop_instance_uid
    assert ledger.claim_uids([a]) == [""]
    assert ledger.claim_uids([b]) == ["b1:0"]
    assert ledger.uid_owner(b.sop_instance_uid) == "b1:0"


def test_the_plan_keeps_accession_and_modality_at_little_cost() -> None:
    """Planned for the report's study table; rows written before them still read."""
    import json
    import zlib

    from migrator.ledger.encoding import pack, unpack

    files = [planned(n, study=f"1.2.3.{n // 20}") for n in range(200)]
    with_them = [
        PlannedFile(
            f.uri,
            f.size,
            f.version,
            f.sop_class_uid,
            f.sop_instance_uid,
            f.transfer_syntax,
            f.study_uid,
            dataset_offset=132 + 200,
            accession=f"ACC{n // 20:07d}",
            modality="CT",
        )
        for n, f in enumerate(files)
    ]
    without = [
        PlannedFile(
            f.uri,
            f.size,
            f.version,
            f.sop_class_uid,
            f.sop_instance_uid,
            f.transfer_syntax,
            f.study_uid,
            dataset_offset=332,
        )
        for f in files
    ]
    cost = (len(pack(with_them)) - len(pack(without))) / len(files)
    assert cost < 1.0, f"{cost:.2f} bytes per planned file"  # measured: ~0.1
    back = unpack("b0000001", pack(with_them))
    assert [(f.accession, f.modality, f.dataset_offset) for f in back[:2]] == [
        ("ACC0000000", "CT", 332),
        ("ACC0000000", "CT", 332),
    ]
    # Rows of 7 and 8 fields (plans written by earlier versions).
    old = zlib.compress(json.dumps([files[0].packed()[:7], [*files[1].packed()[:7], 132]]).encode())
    a, b = unpack("b0000002", old)
    assert (a.dataset_offset, a.accession, a.modality) == (-1, "", "")
    assert (b.dataset_offset, b.accession, b.modality) == (132, "", "")


def test_sessions_keep_the_figures_of_a_finished_job(ledger: Ledger) -> None:
    from migrator.ledger.sessions import active_seconds

    t0 = ledger.mark_started()
    time.sleep(0.3)
    ledger.mark_finished(t0, complete=True, history={"command": "run", "destination": "x"})
    meta = ledger.meta()
    first = active_seconds(meta, meta["finished"])
    assert first is not None and 0.3 <= first < 1.0
    assert ledger.finished() and "session" not in meta
    time.sleep(0.5)  # a pause between sessions counts for nothing
    t1 = ledger.mark_started()
    assert not ledger.finished() and "session" in ledger.meta()
    ledger.mark_finished(t1, complete=True, history={"command": "retry"})
    meta = ledger.meta()
    total = active_seconds(meta, meta["finished"])
    assert total is not None and first <= total < first + 0.3
    assert meta["started"] == t0  # the first start stays
    kinds = [(h["kind"], h.get("command"), h["complete"]) for h in ledger.history()]
    assert kinds == [("session", "run", True), ("session", "retry", True)]
    ledger.add_history("limit", files_per_s=5.0, bytes_per_s=None, burst=10)
    assert ledger.history()[-1]["files_per_s"] == 5.0


def test_a_job_finished_before_sessions_were_kept_keeps_its_duration(ledger: Ledger) -> None:
    from migrator.ledger.sessions import active_seconds

    ledger.client.hset(ledger.keys.meta, mapping={"started": 1000.0, "finished": 1010.0})
    assert active_seconds(ledger.meta(), 1010.0) is None  # finished - started applies
    t = ledger.mark_started()
    ledger.mark_finished(t, complete=True)
    meta = ledger.meta()
    spent = active_seconds(meta, meta["finished"])
    assert spent is not None and 10.0 <= spent < 10.5


def _rows(ledger: Ledger) -> list[tuple[str, FileOutcome | None, dict[str, object]]]:
    return [(p.file_id, o, e) for p, o, e in ledger.iter_files()]


def test_settled_batches_read_ahead_give_the_same_files_and_are_not_read_again(
    ledger: Ledger,
) -> None:
    """`run` reads settled batches while it waits (ledger/readahead.py); the final read
    takes them from there: the same rows, in the same order, as a read of everything."""
    from migrator.ledger.readahead import ReadAhead

    b1 = ledger.add_batch("b1", [planned(i) for i in range(3)])
    b2 = ledger.add_batch("b2", [planned(i) for i in range(3, 6)])
    now = time.time()
    ledger.record_many([(f.file_id, outcome(f, State.STORED), now) for f in b1], worker="w1")
    ledger.record_many([(b2[0].file_id, outcome(b2[0], State.FAILED, "x"), now)])
    whole = _rows(ledger)
    ahead = ledger.ahead = ReadAhead(ledger)
    assert ahead.step() == 1 and set(ahead.batches) == {"b1"}  # b2 still in flight
    assert ahead.step() == 0
    rows = _rows(ledger)
    assert rows == whole
    # b1's rows are the ones read ahead (its outcomes were not read and parsed again).
    assert [o for _, o, _ in rows[:3]] == [o for _, o, _ in ahead.batches["b1"].rows]
    assert all(
        a is b for (_, a, _), (_, b, _) in zip(rows[:3], ahead.batches["b1"].rows, strict=True)
    )
    # b2 settles: the next step takes it too, and the final read still agrees.
    ledger.record_many([(f.file_id, outcome(f, State.STORED), now) for f in b2[1:]])
    assert ahead.step() == 1 and set(ahead.batches) == {"b1", "b2"}
    ahead.batches.clear()
    fresh = _rows(ledger)
    ahead.step(), ahead.step()
    assert _rows(ledger) == fresh


def test_a_batch_changed_after_it_was_read_ahead_is_read_again(ledger: Ledger) -> None:
    """A stored file reopened and stored again after its batch was read ahead: the final
    read has its new outcome (here its new time), not the one read ahead."""
    from migrator.ledger.readahead import ReadAhead

    f, g = ledger.add_batch("b1", [planned(1), planned(2)])
    ledger.record_many([(x.file_id, outcome(x, State.STORED), 1_000_000.0) for x in (f, g)])
    ahead = ledger.ahead = ReadAhead(ledger)
    assert ahead.step() == 1
    assert ledger.reopen_stored([f.file_id]) == 1
    ledger.record_many([(f.file_id, outcome(f, State.STORED), 1_000_050.0)])
    assert ledger.batch_states("b1") == "ss"  # the same states as read ahead
    ats = {fid: e["at"] for fid, _, e in _rows(ledger)}
    assert ats == {f.file_id: 1_000_050.0, g.file_id: 1_000_000.0}
    # A batch reopened and still in flight: in flight in the final read.
    assert ledger.reopen_stored([g.file_id]) == 1
    assert [(fid, o is None) for fid, o, _ in _rows(ledger)] == [
        (f.file_id, False),
        (g.file_id, True),
    ]
