"""Fault 11 (issue 7): the spool folder for large S3 objects runs out of space.

Objects of at least ``S3Settings.memory_threshold`` (8 MiB) are spooled to a file in the
temporary folder (``TMPDIR``; the local workers' own folder inside it for `migrator run`),
the others fetched into memory. Here that folder is a real 24 MiB tmpfs with an 8 MiB filler
file in it: 16 MiB free, so a 10 MiB object spools, a 20 MiB one hits ENOSPC. A real moto S3
server holds small, 10 MiB and 20 MiB DICOM objects, sent with `migrator store` (to DCMTK
storescp) and `migrator run` (a redis-server and a real Celery worker, to the counting SCP).

Expected: the command ends within bounded time with exit 1 (failed files), every file is
accounted for, the 20 MiB objects are failed with a reason naming the spool folder and "no
space left", everything else is at the receiver, no spool file is left behind; once the
filler is removed, the same store / `migrator retry` sends the rest. `store` also meets a
spool folder out of inodes (no spool file can even be created): every spooled object fails
the same way, the small ones are stored.

Mounting a tmpfs needs root: CI runs the tests as root (Debian), so there the tests run;
anywhere else they are skipped with that reason. As root, a failed mount fails the test.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from migrator import synth
from migrator.ledger import Ledger
from migrator.outcomes import State
from tests.enginehelpers import common_args, finish, only_job, start_run, wait_until
from tests.peers.counting_scp import counting_scp
from tests.peers.dcmtk import StoreScpPeer
from tests.peers.redis import RedisPeer
from tests.peers.s3 import ACCESS_KEY, REGION, SECRET_KEY, MotoS3
from tests.storehelpers import load_report, run_migrator, sop_uid
from tests.test_faults_engine import workers

pytestmark = pytest.mark.timeout(300)

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}
MiB = 1024 * 1024
DISK_SIZE = 24 * MiB
FILLER_SIZE = 8 * MiB  # leaves 16 MiB: one 10 MiB object at a time fits, 20 MiB does not
INODES = 64  # plenty for a worker's pymp-* folder and spool files, few to fill
SPOOL_PREFIX = "migrator-s3-"  # S3Source._open_spool's file names


# -- a small spool disk ---------------------------------------------------------------------


@dataclass
class SmallDisk:
    """``blocks``: 8 MiB of the 24 taken, 16 MiB free. ``inodes``: every inode taken by
    empty files, so not even an empty spool file can be created (mkstemp's ENOSPC)."""

    path: Path
    full_of: str

    def fill(self) -> None:
        if self.full_of == "blocks":
            # tmpfs allocates on write: this space is really taken
            (self.path / "filler").write_bytes(b"\0" * FILLER_SIZE)
            return
        for i in range(INODES + 1):
            try:
                (self.path / f"filler-{i}").touch()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return
        raise AssertionError(f"{INODES} inodes and still room for files")

    def free_space(self) -> None:
        for filler in self.path.glob("filler*"):
            filler.unlink()

    def spool_files(self) -> list[str]:
        return [name for name in os.listdir(self.path) if name.startswith(SPOOL_PREFIX)]


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SmallDisk]:
    """A 24 MiB tmpfs, filled as ``request.param`` says (default: blocks); unmounted at
    teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the tests as root)")
    full_of = getattr(request, "param", "blocks")
    mountpoint = tmp_path / "spool"
    mountpoint.mkdir()
    options = f"size={DISK_SIZE},nr_inodes={INODES},mode=0700"
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"cannot mount a tmpfs as root: {proc.stderr}"
    disk = SmallDisk(mountpoint, full_of)
    try:
        disk.fill()
        yield disk
    finally:
        # Lazy: a worker killed at teardown may still hold its pymp-* folder open.
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


# -- the S3 archive ---------------------------------------------------------------------------


@dataclass
class Archive:
    bucket: str
    small: set[str]  # SOP Instance UIDs, fetched into memory
    fits: set[str]  # 10 MiB, spooled, room for one
    too_big: set[str]  # 20 MiB, never fit next to the filler
    keys: dict[str, str]  # SOP Instance UID -> S3 key

    @property
    def all(self) -> set[str]:
        return self.small | self.fits | self.too_big

    def unspoolable(self, disk: SmallDisk) -> set[str]:
        """What cannot be spooled on ``disk`` (the small objects never touch it)."""
        return self.too_big if disk.full_of == "blocks" else self.fits | self.too_big


def s3_archive(moto: MotoS3, tmp: Path) -> Archive:
    bucket = moto.create_bucket()
    groups = {
        # 64x64 CT: ~8 KB
        "small": synth.write_corpus(tmp / "small", count=4, seed=111),
        # 2048 x 2560 x 16 bits: 10 MiB of pixels
        "fits": synth.write_corpus(tmp / "fits", count=2, rows=2048, cols=2560, seed=112),
        # 2048 x 5120 x 16 bits: 20 MiB
        "too_big": synth.write_corpus(tmp / "big", count=2, rows=2048, cols=5120, seed=113),
    }
    uids: dict[str, set[str]] = {}
    keys: dict[str, str] = {}
    for group, paths in groups.items():
        uids[group] = set()
        for path in paths:
            uid = sop_uid(path)
            keys[uid] = f"archive/{group}-{path.name}"
            moto.upload_file(bucket, keys[uid], str(path))
            uids[group].add(uid)
    return Archive(bucket, uids["small"], uids["fits"], uids["too_big"], keys)


def s3_args(moto: MotoS3) -> list[str]:
    return ["--s3-endpoint", moto.endpoint, "--s3-region", REGION]


def assert_failed_for_space(reason: str, disk: SmallDisk) -> None:
    assert f"spool folder {disk.path} is full" in reason, reason
    assert "no space left on device" in reason, reason


def assert_report(path: Path, archive: Archive, disk: SmallDisk) -> None:
    """planned = stored + failed + skipped; what could not be spooled failed for lack of
    space, the rest stored."""
    report = load_report(path)  # checks the invariant and one line per planned file
    failed = archive.unspoolable(disk)
    totals = report["totals"]
    assert (totals["planned"], totals["stored"], totals["failed"], totals["skipped"]) == (
        len(archive.all),
        len(archive.all - failed),
        len(failed),
        0,
    ), totals
    by_key = {f["uri"].split("/", 3)[3]: f for f in report["files"]}
    for uid in archive.all:
        line = by_key[archive.keys[uid]]
        if uid in failed:
            assert line["state"] == "failed", line
            assert_failed_for_space(line["reason"], disk)
        else:
            assert line["state"] == "stored", line


# -- migrator store ---------------------------------------------------------------------------


@pytest.mark.parametrize("small_disk", ["blocks", "inodes"], indirect=True)
def test_store_from_s3_with_a_full_spool_folder_fails_those_files_and_ends(
    tmp_path: Path, small_disk: SmallDisk, moto_s3: MotoS3, storescp: StoreScpPeer
) -> None:
    archive = s3_archive(moto_s3, tmp_path / "src")
    env = {**AWS_ENV, "TMPDIR": str(small_disk.path)}
    args = [
        "store",
        *common_args((storescp.host, storescp.port), storescp.aet),
        *s3_args(moto_s3),
        "-j",
        "1",  # one spool file at a time: which objects fit is then certain
        f"s3://{archive.bucket}/archive/",
    ]
    start = time.monotonic()
    proc = run_migrator(*args, "--report", tmp_path / "store.json", env=env, timeout=120)
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # documented: 1 = one or more files failed
    assert elapsed < 60, f"store took {elapsed:.0f} s"
    assert_report(tmp_path / "store.json", archive, small_disk)
    at_receiver = {sop_uid(p) for p in storescp.received_files()}
    assert at_receiver == archive.all - archive.unspoolable(small_disk)
    assert small_disk.spool_files() == []

    # Room again: the same command sends everything (storescp overwrites the others).
    small_disk.free_space()
    proc = run_migrator(*args, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {sop_uid(p) for p in storescp.received_files()} == archive.all
    assert small_disk.spool_files() == []


# -- migrator run (Redis, a real Celery worker) + migrator retry ------------------------------


def test_run_from_s3_with_a_full_spool_folder_fails_those_files_and_retry_sends_them(
    tmp_path: Path, small_disk: SmallDisk, moto_s3: MotoS3, redis_server: RedisPeer
) -> None:
    archive = s3_archive(moto_s3, tmp_path / "src")
    url = redis_server.url
    with (
        counting_scp() as scp,
        # One worker process: one spool file at a time. TMPDIR as a worker host would set it.
        workers(url, 1, tmp_path / "logs", TMPDIR=str(small_disk.path), **AWS_ENV),
    ):
        start = time.monotonic()
        code, out = finish(
            start_run(
                f"s3://{archive.bucket}/archive/",
                *common_args(("127.0.0.1", scp.port), scp.ae_title),
                "--redis-url",
                url,
                *s3_args(moto_s3),
                "--batch-files",
                "3",
                "--report",
                tmp_path / "run.json",
                env=AWS_ENV,
            ),
            timeout=120,
        )
        elapsed = time.monotonic() - start
        assert code == 1, out  # documented: 1 = one or more files failed
        assert elapsed < 90, f"run took {elapsed:.0f} s"
        assert_report(tmp_path / "run.json", archive, small_disk)
        assert set(scp.stores) == archive.all - archive.unspoolable(small_disk)
        assert small_disk.spool_files() == []
        ledger = only_job(redis_server.client())
        status = run_migrator("status", ledger.job_id, "--redis-url", url)
        assert status.returncode == 1, status.stdout + status.stderr
        assert f"{len(archive.unspoolable(small_disk))} failed" in status.stdout, status.stdout

        small_disk.free_space()
        retry = run_migrator("retry", ledger.job_id, "--redis-url", url)
        assert retry.returncode == 0, retry.stdout + retry.stderr
        assert f"{len(archive.unspoolable(small_disk))} failed files enqueued again" in retry.stdout
        wait_until(lambda: all_stored(ledger, len(archive.all)), 60, "the retried files")
    assert set(scp.stores) == archive.all
    assert all(n == 1 for n in scp.stores.values()), scp.stores  # nothing sent twice
    assert small_disk.spool_files() == []
    status = run_migrator("status", ledger.job_id, "--redis-url", url)
    assert status.returncode == 0, status.stdout + status.stderr


def all_stored(ledger: Ledger, count: int) -> bool:
    counts = ledger.counts()
    done = counts["in_flight"] == 0 and counts["stored"] == counts["planned"] == count
    if done:
        assert all(o.state is State.STORED for _, o, _ in ledger.iter_outcomes())
    return done
