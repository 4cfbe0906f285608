"""``--precheck`` (issue 18): the destination asked, before sending, what it already holds.

Against a real Orthanc that already holds three of the four instances sent, through both
front ends with one test body. A mapping table renames the patient (OLD-1 -> NEW-1), so
the comparison must be made after coercion:

* ``a``: Orthanc holds it as NEW-1 in the same study: the identity is the same: sent
  (stored), as documented;
* ``b``, ``e``: Orthanc holds them under another PatientID (the same one): conflicts,
  failed, the reasons naming the SOP Instance UID and the PatientIDs as keyed tokens (no
  value; the same token for the same ID in both, though `run` sends them in other
  batches; another `store` command shows another token); Orthanc's copies untouched;
* ``d``: Orthanc holds it under another study: a conflict naming both StudyInstanceUIDs;
* ``c``: not at the destination: stored.

The unit tests below check the comparison itself (the coerced PatientID read from the
rewritten elements, ``--on-conflict`` turning conflicts into skips) and the refusal of
rules that change SOP Instance UIDs, without peers.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import pydicom
import pytest

from migrator.dicomfile import DicomHeader, inspect_file
from migrator.errors import ConfigError, ConnectError, DestinationUnavailable
from migrator.limits.rate import NullLimiter
from migrator.outcomes import FileOutcome, State
from migrator.settings import Settings
from migrator.sources.base import Payload, SourceItem
from migrator.synth.dataset import derived_uid, make_dataset, write_dataset
from migrator.transfer.job import Job
from migrator.transfer.policy import Transfer
from migrator.transfer.pool import ConnectionPool
from migrator.transfer.precheck import Checked, DestinationConflict, check_rules
from migrator.transfer.transform import make_transform
from migrator.verify.held import Held
from tests.behaviourhelpers import FRONT_ENDS, Problems, Result, send
from tests.coercehelpers import write_rules
from tests.peers.orthanc import OrthancPeer
from tests.peers.redis import RedisPeer
from tests.storehelpers import run_migrator
from tests.test_transfer_unit import CT, EXPLICIT, Clock, FakeDestination, MemSource

RULES = """
rules:
  - name: new-domain
    map: patients.csv
    match: PatientID
    missing: keep
"""
TABLE = """
PatientID,PatientID
OLD-1,NEW-1
"""
STUDY = derived_uid("precheck", "study")
OTHER_STUDY = derived_uid("precheck", "other-study")


def sop(name: str) -> str:
    return derived_uid("precheck", name)


def instance(name: str, patient_id: str, study: str = STUDY, seed: int = 1) -> pydicom.Dataset:
    return make_dataset(
        "CT",
        rows=16,
        cols=16,
        seed=seed,
        study_uid=study,
        series_uid=derived_uid("precheck", study, "series"),
        sop_uid=sop(name),
        patient_id=patient_id,
    )


def held_copies(orthanc: OrthancPeer, tmp_path: Path) -> None:
    """What the destination holds before the migration."""
    (tmp_path / "held").mkdir()
    for name, pid, study in [
        ("a", "NEW-1", STUDY),
        ("b", "OTHER-9", STUDY),
        ("e", "OTHER-9", STUDY),
    ]:
        write_dataset(instance(name, pid, study, seed=2), tmp_path / "held" / f"{name}.dcm")
    write_dataset(instance("d", "NEW-1", OTHER_STUDY, seed=2), tmp_path / "held" / "d.dcm")
    for f in sorted((tmp_path / "held").iterdir()):
        assert orthanc.upload(f.read_bytes())["Status"] == "Success"


@pytest.mark.parametrize(
    ("front_end", "protocol"), [*((f, "dimse") for f in FRONT_ENDS), ("store", "dicomweb")]
)
def test_an_instance_held_under_another_patient_or_study_is_a_conflict_not_a_send(
    front_end: str, protocol: str, orthanc_factory: Callable[..., OrthancPeer], tmp_path: Path
) -> None:
    """DIMSE through both front ends; DICOMweb (QIDO-RS asked, STOW-RS sent) once."""
    web = protocol == "dicomweb"
    orthanc = orthanc_factory(extra={"DicomAlwaysAllowFind": True}, dicomweb=web)
    held_copies(orthanc, tmp_path)
    (tmp_path / "in").mkdir()
    for name in "abcde":
        write_dataset(instance(name, "OLD-1"), tmp_path / "in" / f"{name}.dcm")
    rules = write_rules(tmp_path / "rules", RULES, patients=TABLE)

    def precheck(folder: Path) -> Result:
        return send(
            front_end,
            folder,
            orthanc.dicom_port,
            "ORTHANC",
            tmp_path,
            "--coerce",
            rules,
            "--precheck",
            # b and e in batches of their own (each reads the job's settings, its key,
            # from Redis): the same token from every sender of the job
            run_extra=["--batch-files", "2"],
            dest=["--dicomweb", orthanc.dicomweb_url] if web else [],
        )

    result = precheck(tmp_path / "in")
    p = Problems()
    files = result.files()
    states = {n: files[f"{n}.dcm"]["state"] for n in "abcde"}
    want = {"a": "stored", "b": "failed", "c": "stored", "d": "failed", "e": "failed"}
    p.check(states == want, f"states {states}, expected {want}")
    p.check(result.rc == 1, f"exit {result.rc} (three conflicts)")
    # Not sent: no attempt counted (the report groups them "Not sent", not "No response").
    attempts = {n: files[f"{n}.dcm"]["attempts"] for n in "bde"}
    p.check(attempts == dict.fromkeys("bde", 0), f"attempts of the conflicts: {attempts}")
    b, d, e = (files[f"{n}.dcm"]["reason"] for n in "bde")
    tokens = {}
    for name, reason in [("b", b), ("e", e)]:
        found = re.search(
            f"conflict: the destination already holds SOP Instance UID {sop(name)} under "
            r"PatientID (<7 chars #[0-9a-f]{8}>) \(this file's: (<5 chars #[0-9a-f]{8}>)\)",
            reason,
        )
        p.check(found is not None, f"{name}: {reason!r}")
        tokens[name] = found.groups() if found else ("", "")
        p.check(f"{name}.dcm" in reason and "not sent (--precheck)" in reason, reason)
    theirs, mine = tokens["b"]
    p.check(tokens["e"] == tokens["b"], f"one ID, two tokens in one job: {tokens}")
    p.check(theirs != mine, f"two IDs, one token: {tokens}")
    guessable = unkeyed_digests(sop("b"), "OTHER-9") | unkeyed_digests(sop("e"), "OTHER-9")
    p.check(theirs[-9:-1] not in guessable, f"{theirs}: an unkeyed hash of the PatientID")
    p.check(
        f"under StudyInstanceUID {OTHER_STUDY} (this file's: {STUDY})" in d and "d.dcm" in d,
        f"d: {d!r}",
    )
    p.check("PatientID" not in d, f"d's PatientID is the same after coercion: {d!r}")
    leaked = [v for v in ("OTHER-9", "NEW-1", "OLD-1") if v in b + d + e]
    p.check(not leaked, f"PatientIDs in the report: {leaked}")
    # The destination's copies are as they were; c arrived.
    oid = orthanc.find_instance(sop("b"))
    p.check(oid and orthanc.simplified_tags(oid)["PatientID"] == "OTHER-9", "b was replaced")
    oid = orthanc.find_instance(sop("d"))
    p.check(oid and orthanc.simplified_tags(oid)["StudyInstanceUID"] == OTHER_STUDY, "d moved")
    oid = orthanc.find_instance(sop("c"))
    p.check(oid and orthanc.simplified_tags(oid)["PatientID"] == "NEW-1", "c not stored")
    p.check(orthanc.count_instances() == 5, f"{orthanc.count_instances()} instances")
    if front_end == "store" and not web:
        # Another command, the same data: another token (its key is its own).
        (tmp_path / "again").mkdir()
        write_dataset(instance("b", "OLD-1"), tmp_path / "again" / "b.dcm")
        again = precheck(tmp_path / "again").files()["b.dcm"]["reason"]
        other = re.search(r"under PatientID (<7 chars #[0-9a-f]{8}>)", again)
        p.check(other is not None and other.group(1) != theirs, f"{tokens} / {again!r}")
    p.done(result)


def unkeyed_digests(sop_uid: str, value: str) -> set[str]:
    """What a report's token must not be: the first 8 hex digits of an unkeyed sha256 of
    the value, alone or with the SOP Instance UID (anyone could try every MRN)."""
    texts = [value, sop_uid + value, f"{sop_uid}\0{value}", value + sop_uid]
    return {hashlib.sha256(t.encode()).hexdigest()[:8] for t in texts}


# -- the comparison, without peers ---------------------------------------------------------


def _checked(
    tmp_path: Path, held: dict[str, Held], on_conflict: str = "fail", secret: str = ""
) -> Checked:
    rules = write_rules(tmp_path / "rules", RULES, patients=TABLE)
    settings = Settings(host="x", coerce=str(rules))
    return Checked(make_transform(settings), held, on_conflict, secret)


def _conflict(check: Checked, f: Path) -> str:
    with pytest.raises(DestinationConflict) as exc:
        check(inspect_file(str(f)), Payload(path=str(f)))
    return str(exc.value)


def test_patient_id_tokens_are_keyed_by_the_job_equal_within_it_and_unguessable(
    tmp_path: Path,
) -> None:
    """Two files whose copies at the destination have the same other PatientID: the same
    token in both reasons, from any sender of the job (the key comes with its settings);
    another job (another key) shows another token for the same data; no token is an
    unkeyed hash of the ID that one could compute for every MRN."""
    files = [write_dataset(instance(n, "OLD-1"), tmp_path / f"{n}.dcm") for n in "ab"]
    held = {sop(n): Held(STUDY, "1234567") for n in "ab"}
    job = Settings("x", precheck=True)
    pattern = r"under PatientID (<7 chars #[0-9a-f]{8}>) \(this file's: (<5 chars #[0-9a-f]{8}>)"

    def tokens(secret: str, f: Path) -> tuple[str, ...]:
        found = re.search(pattern, _conflict(_checked(tmp_path, held, secret=secret), f))
        assert found is not None
        return found.groups()

    a, b = (tokens(job.precheck_secret, f) for f in files)  # two batches of one job
    assert a == b and a[0] != a[1]
    other_job = Settings("x", precheck=True)
    assert tokens(other_job.precheck_secret, files[0]) != a
    for n in "ab":
        assert a[0][-9:-1] not in unkeyed_digests(sop(n), "1234567")
        assert a[1][-9:-1] not in unkeyed_digests(sop(n), "NEW-1")
    assert "1234567" not in _conflict(_checked(tmp_path, held), files[0])


def test_the_precheck_secret_is_drawn_per_job_kept_with_it_and_never_shown() -> None:
    one, two = Settings("x", precheck=True), Settings("x", precheck=True)
    assert re.fullmatch("[0-9a-f]{32}", one.precheck_secret)
    assert one.precheck_secret != two.precheck_secret
    assert Settings.from_dict(one.to_dict()).precheck_secret == one.precheck_secret
    assert one.precheck_secret not in repr(one)
    assert Settings("x").precheck_secret == ""  # no --precheck, no key


def test_the_patient_id_compared_is_the_coerced_one(tmp_path: Path) -> None:
    f = write_dataset(instance("a", "OLD-1"), tmp_path / "a.dcm")
    header = inspect_file(str(f))
    same = _checked(tmp_path, {sop("a"): Held(STUDY, "NEW-1")})
    _, payload = same(header, Payload(path=str(f)))
    assert payload.head is not None  # coerced, and not refused
    with pytest.raises(DestinationConflict) as exc:
        _checked(tmp_path, {sop("a"): Held(STUDY, "OLD-1")})(header, Payload(path=str(f)))
    assert not exc.value.skip and "PatientID" in str(exc.value)
    assert "OLD-1" not in str(exc.value) and "NEW-1" not in str(exc.value)


def test_a_file_no_rule_changes_is_read_for_its_patient_id(tmp_path: Path) -> None:
    f = write_dataset(instance("z", "KEPT-1"), tmp_path / "z.dcm")
    header = inspect_file(str(f))
    check = _checked(tmp_path, {sop("z"): Held(STUDY, "KEPT-1")})
    assert check(header, Payload(path=str(f)))[1].head is None  # sent as it is
    data = Payload(data=f.read_bytes())  # bytes (S3) as well as paths
    with pytest.raises(DestinationConflict):
        _checked(tmp_path, {sop("z"): Held(STUDY, "KEPT-2")})(header, data)


@pytest.mark.parametrize("policy", ["first-good", "skip"])
def test_on_conflict_first_good_and_skip_skip_a_conflict(tmp_path: Path, policy: str) -> None:
    f = write_dataset(instance("a", "OLD-1"), tmp_path / "a.dcm")
    check = _checked(tmp_path, {sop("a"): Held(OTHER_STUDY, "NEW-1")}, policy)
    with pytest.raises(DestinationConflict) as exc:
        check(inspect_file(str(f)), Payload(path=str(f)))
    assert exc.value.skip and f"skipped (--on-conflict {policy})" in str(exc.value)


def test_rules_that_change_sop_instance_uids_cannot_be_prechecked(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path / "r",
        "rules:\n  - name: re-uid\n    prefix: SOPInstanceUID\n    value: '9.'\n"
        "    allow_uid: true\n",
    )
    with pytest.raises(ConfigError, match=re.escape("rule re-uid (line 2) changes SOPInstanceUID")):
        check_rules(Settings(host="x", coerce=str(rules), precheck=True))
    check_rules(Settings(host="x", coerce=None, precheck=True))  # no rules: fine


def test_a_destination_that_refuses_the_query_gets_nothing_unchecked(
    orthanc: OrthancPeer, tmp_path: Path
) -> None:
    """Orthanc as shipped aborts a C-FIND from an AE it does not know: every file fails
    with the reason, none is sent unchecked. (`store` only: `run` treats the abort as it
    treats a PACS that aborts sends, retrying the batch for ~75 s before the same end.)"""
    (tmp_path / "in").mkdir()
    for name in "ab":
        write_dataset(instance(name, "OLD-1"), tmp_path / "in" / f"{name}.dcm")
    result = send("store", tmp_path / "in", orthanc.dicom_port, "ORTHANC", tmp_path, "--precheck")
    p = Problems()
    reasons = {n: result.files()[f"{n}.dcm"]["reason"] for n in "ab"}
    states = {n: result.files()[f"{n}.dcm"]["state"] for n in "ab"}
    p.check(states == {"a": "failed", "b": "failed"}, f"states {states}")
    p.check(all("--precheck" in r for r in reasons.values()), f"reasons {reasons}")
    p.check(result.rc == 3, f"exit {result.rc} (3: the destination did not answer)")
    p.check(orthanc.count_instances() == 0, "a file was sent unchecked")
    p.done(result)


def test_a_job_is_resumed_only_with_its_own_precheck(
    redis_server: RedisPeer, tmp_path: Path
) -> None:
    """Workers check (or not) as the job was created: `plan` again with the other choice
    is refused (exit 2) rather than silently ignored."""
    (tmp_path / "in").mkdir()
    write_dataset(instance("a", "OLD-1"), tmp_path / "in" / "a.dcm")
    where = ["--host", "127.0.0.1", "--port", "9", "--no-preflight"]

    def plan(*extra: str) -> subprocess.CompletedProcess[str]:
        return run_migrator(
            "plan", tmp_path / "in", *where, "--redis-url", redis_server.url, *extra
        )

    assert plan().returncode == 0
    refused = plan("--precheck")
    assert refused.returncode == 2, refused.stderr
    assert "was created without --precheck" in refused.stderr


def test_a_run_jobs_precheck_key_is_its_own_kept_in_redis_and_masked_in_its_report(
    redis_server: RedisPeer, tmp_path: Path
) -> None:
    """Every sender of a job reads the key from the job's settings in Redis; `plan` draws
    one per job, and `migrator report` shows the job's settings without it."""
    from migrator.ledger import Ledger

    (tmp_path / "in").mkdir()
    write_dataset(instance("a", "OLD-1"), tmp_path / "in" / "a.dcm")
    where = ["--host", "127.0.0.1", "--port", "9", "--no-preflight", "--precheck"]
    jobs = [f"precheck-key-{tmp_path.name}-{n}" for n in (1, 2)]
    url = ["--redis-url", redis_server.url]
    for job in jobs:
        planned = run_migrator("plan", tmp_path / "in", *where, *url, "--job", job)
        assert planned.returncode == 0, planned.stderr
    keys = [Ledger(redis_server.client(), j).config()["precheck_secret"] for j in jobs]
    assert all(re.fullmatch("[0-9a-f]{32}", k) for k in keys) and keys[0] != keys[1], keys
    report = run_migrator("report", jobs[0], *url, "--format", "json")
    assert report.returncode == 0, report.stderr
    assert keys[0] not in report.stdout + report.stderr
    assert json.loads(report.stdout)["settings"]["precheck_secret"] == "***"


# -- in the transfer core, on scripted connections -----------------------------------------


def _transfer(n: int) -> tuple[Transfer, list[FileOutcome], FakeDestination, list[Job]]:
    got: list[FileOutcome] = []
    dest = FakeDestination()
    clock = Clock()
    settings = Settings("fake", precheck=True)
    pool = ConnectionPool(dest, capacity=1, clock=clock)
    t = Transfer(
        settings, pool, NullLimiter(), lambda j, o: got.append(o), sleep=clock.sleep, clock=clock
    )
    todo = [
        Job(
            SourceItem(f"mem://{i}", 100),
            MemSource(),
            DicomHeader(CT, f"1.2.3.{i}", EXPLICIT, "1.2", "1.3", 0, 100, False),
        )
        for i in range(n)
    ]
    return t, got, dest, todo


def test_one_query_for_every_file_of_a_transfer_before_the_first_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[list[tuple[str, str]]] = []

    def held_instances(settings: Settings, wanted: Iterable[tuple[str, str]]) -> dict[str, Held]:
        asked.append(list(wanted))
        # (the payloads are empty: no PatientID, as the held copies)
        return {"1.2.3.7": Held("9.9", ""), "1.2.3.8": Held("1.2", "")}

    monkeypatch.setattr("migrator.verify.held.held_instances", held_instances)
    t, got, dest, todo = _transfer(250)
    ended = t.run(todo)
    assert ended.error is None and not ended.left
    assert asked == [[("1.2", f"1.2.3.{i}") for i in range(250)]]  # once, all of them
    states = {o.sop_instance_uid: o.state for o in got}
    assert states["1.2.3.7"] is State.FAILED and states["1.2.3.8"] is State.STORED
    assert sum(s is State.STORED for s in states.values()) == 249
    assert "1.2.3.7" not in dest.opened[0].sent


def test_a_destination_that_cannot_be_asked_gets_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def held_instances(settings: Settings, wanted: Iterable[tuple[str, str]]) -> dict[str, Held]:
        raise ConnectError("connection refused", unreachable=True)

    monkeypatch.setattr("migrator.verify.held.held_instances", held_instances)
    t, got, dest, todo = _transfer(3)
    ended = t.run(todo)
    assert isinstance(ended.error, DestinationUnavailable) and ended.error.retryable
    assert "--precheck: cannot ask the destination" in str(ended.error)
    assert len(ended.left) == 3 and not got and not dest.opened
