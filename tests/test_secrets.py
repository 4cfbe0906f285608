"""Secrets and patient data stay out of every output; AE titles are validated.

One migration (`migrator run`) reads a folder and an S3 prefix (moto) with an S3 secret key
in the environment, through a Redis that requires a password, into `migrator scp`, which
fails every fourth C-STORE so that failure reasons are reported too. Then every output is
read back and searched for the secrets and for the patients' names and IDs: the run's own
output at -v, the worker's log at INFO, the receiver's log, the reports in every format
(`--report` and `migrator report`), `status`, `jobs`, every command's `--help` with the
secrets in the environment, and the errors of commands given a wrong Redis password.
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from migrator import synth
from migrator.cli import COMMANDS, main
from tests.enginehelpers import common_args, finish, only_job, start_run
from tests.peers.migrator_scp import RunningScp, start_migrator_scp
from tests.peers.redis import RedisPeer, redis_peer
from tests.peers.s3 import REGION, moto_s3_server
from tests.storehelpers import run_migrator
from workers.local import LocalWorkers

pytestmark = pytest.mark.timeout(180)

REDIS_PASSWORD = f"redis-pw-{uuid.uuid4().hex[:12]}"
WRONG_PASSWORD = f"wrong-pw-{uuid.uuid4().hex[:12]}"
AWS_SECRET = f"aws-secret-{uuid.uuid4().hex}"
SECRETS = (REDIS_PASSWORD, WRONG_PASSWORD, AWS_SECRET)
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIATESTSECRETSCHECK",
    "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}
# Distinctive patient data (nothing else in an output can contain these by chance).
PATIENT_NAME = "Qxzvbnm^Wjklpty"
PATIENT_FAMILY = "Qxzvbnm"
PATIENT_ID = "PID7Q3K9X2W"
PATIENT_DATA = (PATIENT_FAMILY, "Wjklpty", PATIENT_ID)


def assert_no_secret(where: str, text: str) -> None:
    assert text, f"{where}: no output at all (nothing was checked)"
    for secret in SECRETS:
        assert secret not in text, f"a secret leaked into {where}:\n{text[-3000:]}"


def assert_no_patient_data(where: str, text: str) -> None:
    for value in PATIENT_DATA:
        assert value not in text, f"patient data {value!r} in {where}:\n{text[-3000:]}"


def patient_corpus(folder: Path, count: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        ds = synth.make_dataset(seed=seed, patient_id=PATIENT_ID, instance_number=i + 1)
        ds.PatientName = PATIENT_NAME
        ds.OtherPatientIDs = PATIENT_ID
        paths.append(synth.write_dataset(ds, folder / f"{i:04d}.dcm"))
    return paths


@dataclass
class Migration:
    redis: RedisPeer
    scp: RunningScp
    job: str
    outputs: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


@pytest.fixture(scope="module")
def migration(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("secrets")
    local = tmp / "archive"
    patient_corpus(local, 12, seed=1)
    (local / "notes.txt").write_text("not DICOM")
    (local / "truncated.dcm").write_bytes((local / "0000.dcm").read_bytes()[:300])
    s3_files = patient_corpus(tmp / "s3src", 8, seed=2)
    with (
        redis_peer(tmp / "redis", password=REDIS_PASSWORD) as redis,
        moto_s3_server() as s3,
        start_migrator_scp(tmp / "scp", "--fail-status", "C000", "--fail-every", "4") as scp,
    ):
        bucket = s3.create_bucket()
        s3.put_many(bucket, ((f"in/{p.name}", p.read_bytes()) for p in s3_files))
        worker_log = tmp / "worker.log"
        report = tmp / "run-report.html"
        with LocalWorkers(redis.url, 1, env=AWS_ENV, loglevel="INFO", logfile=str(worker_log)):
            proc = start_run(
                local,
                f"s3://{bucket}/in/",
                *common_args((scp.host, scp.port), scp.ae_title),
                "--redis-url",
                redis.url,
                "--s3-endpoint",
                s3.endpoint,
                "--s3-region",
                REGION,
                "--retries",
                "0",
                "--report",
                report,
                "-v",
                env=AWS_ENV,
            )
            code, out = finish(proc, timeout=120)
        assert code == 1, out  # failures by design: a truncated file, every 4th C-STORE
        job = only_job(redis.client()).job_id
        m = Migration(redis, scp, job)
        m.outputs["migrator run -v (stdout+stderr)"] = out
        m.outputs["worker log (INFO)"] = worker_log.read_text(errors="replace")
        m.files["--report run-report.html"] = report
        yield m
        m.outputs["migrator scp log (INFO)"] = scp.stop()


def test_no_secret_in_the_run_output_worker_log_and_report(migration: Migration) -> None:
    for where, text in migration.outputs.items():
        assert_no_secret(where, text)
    for where, path in migration.files.items():
        assert_no_secret(where, path.read_text(errors="replace"))
    # The report does show the configuration, with the password masked.
    assert "***" in migration.files["--report run-report.html"].read_text()


def test_no_secret_in_migrator_report_status_and_jobs(migration: Migration, tmp_path: Path) -> None:
    url = migration.redis.url
    commands: list[list[str]] = [
        ["report", migration.job, "--redis-url", url, "--format", fmt]
        for fmt in ("text", "json", "csv", "html")
    ]
    commands += [
        ["report", migration.job, "--redis-url", url, "-o", str(tmp_path / "r.json")],
        ["status", migration.job, "--redis-url", url],
        ["status", migration.job, "--redis-url", url, "--json"],
        ["jobs", "--redis-url", url],
        ["report", migration.job, "--format", "json"],  # URL from the environment
    ]
    env = {**AWS_ENV, "MIGRATOR_REDIS_URL": url}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        procs = list(pool.map(lambda args: run_migrator(*args, env=env), commands))
    for args, proc in zip(commands, procs, strict=True):
        # status: 1 for a job with failures, as this one has
        assert proc.returncode in (0, 1), (args, proc.stderr)
        assert_no_secret(f"migrator {' '.join(args[:1])} {args[-1]}", proc.stdout + proc.stderr)
        assert_no_patient_data(f"migrator {args[0]}", proc.stdout + proc.stderr)
    assert_no_secret("report -o r.json", (tmp_path / "r.json").read_text())


def test_help_never_shows_secrets_from_the_environment() -> None:
    env = {
        **AWS_ENV,
        "MIGRATOR_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0",
        "MIGRATOR_FLOWER_BASIC_AUTH": f"admin:{REDIS_PASSWORD}",
        "MIGRATOR_S3_ENDPOINT": f"https://user:{AWS_SECRET}@s3.example.org",
    }
    commands = [["--help"], *([name, "--help"] for name in COMMANDS)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        procs = list(pool.map(lambda args: run_migrator(*args, env=env), commands))
    for args, proc in zip(commands, procs, strict=True):
        assert proc.returncode == 0, (args, proc.stderr)
        assert_no_secret(f"migrator {' '.join(args)}", proc.stdout + proc.stderr)


# A wrong password is a refusal, not an outage: no retries (migrator.redis_client.connect).
WRONG_CREDENTIALS = [
    pytest.param(f":{WRONG_PASSWORD}@", id="wrong-password"),
    pytest.param(f"default:{WRONG_PASSWORD}@", id="user-and-wrong-password"),
    pytest.param("", id="no-password"),  # NOAUTH on the first command
]


@pytest.mark.parametrize("auth", WRONG_CREDENTIALS)
def test_a_wrong_redis_password_fails_run_and_plan_at_once_and_is_never_shown(
    auth: str, tmp_path: Path
) -> None:
    """run (with and without local workers), plan, status, report and retry give up within
    seconds with exit 3 and a line naming the authentication failure; it used to take
    ~35 s (~10 min for NOAUTH) of retries as if Redis were restarting."""
    source = tmp_path / "src"
    patient_corpus(source, 1, seed=5)
    with redis_peer(tmp_path / "redis", password=REDIS_PASSWORD) as redis:
        url = f"redis://{auth}127.0.0.1:{redis.port}/0"
        dest = ["--host", "127.0.0.1", "--port", "1"]  # never reached: Redis refuses first
        commands = [
            ["run", str(source), *dest, "--redis-url", url],
            ["run", str(source), *dest, "--redis-url", url, "--workers", "1"],
            ["plan", str(source), *dest, "--redis-url", url],
            ["status", "job-x", "--redis-url", url],
            ["report", "job-x", "--redis-url", url],
            ["retry", "job-x", "--redis-url", url],
            ["jobs", "--redis-url", url],
        ]

        def timed(args: list[str]) -> tuple[float, Any]:
            start = time.monotonic()
            proc = run_migrator(*args, env=AWS_ENV, timeout=60)
            return time.monotonic() - start, proc

        # Two at a time: each is timed alone, not slowed by five others on two cores.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(timed, commands))
        client = redis.client()
        assert client.dbsize() == 0  # nothing was planned or enqueued
    for args, (elapsed, proc) in zip(commands, results, strict=True):
        where = f"migrator {' '.join(args[:1] + args[-2:])} with a wrong password"
        output = proc.stdout + proc.stderr
        assert proc.returncode == 3, (where, output)
        assert elapsed < 10, (where, f"{elapsed:.1f} s", output)
        assert "Traceback" not in output, (where, output)
        assert_no_secret(where, output)
        assert REDIS_PASSWORD not in output
        if args[0] in ("run", "plan"):
            assert "refused the credentials (authentication failed" in proc.stderr, output
            assert "redis://***@127.0.0.1" in proc.stderr or not auth, output
        else:
            assert "cannot reach Redis" in proc.stderr, output
        assert any(word in output for word in ("username-password", "Authentication")), output


@pytest.mark.slow
def test_errors_with_a_wrong_redis_password_do_not_show_it(
    migration: Migration, tmp_path: Path
) -> None:
    """A wrong password fails at once (test above); a closed port is retried as a Redis
    restart would be, here for 3 s (``MIGRATOR_REDIS_RIDE_OUT``; 35 s by default) before
    the command gives up: what is checked is what the errors show, not how long they wait
    (test_redis_ride_out.py)."""
    port = migration.redis.port
    wrong = f"redis://:{WRONG_PASSWORD}@127.0.0.1:{port}/0"
    closed = f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0"  # nothing listens on port 1
    source = tmp_path / "src"
    patient_corpus(source, 1, seed=3)
    dest = ["--host", "127.0.0.1", "--port", str(migration.scp.port)]
    commands = [
        ["run", str(source), *dest, "--redis-url", wrong],
        ["run", str(source), *dest, "--redis-url", closed],
        ["plan", str(source), *dest, "--redis-url", wrong],
        ["report", migration.job, "--redis-url", wrong],
        ["status", migration.job, "--redis-url", wrong],
        ["jobs", "--redis-url", closed],
    ]
    env = {**AWS_ENV, "MIGRATOR_REDIS_RIDE_OUT": "3"}
    # All at once: each one mostly sleeps between its client's retries.
    with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
        procs = list(pool.map(lambda args: run_migrator(*args, env=env, timeout=90), commands))
    for args, proc in zip(commands, procs, strict=True):
        where = f"migrator {args[0]} with a bad --redis-url"
        assert proc.returncode != 0, (args, proc.stdout, proc.stderr)
        assert_no_secret(where, proc.stdout + proc.stderr)


# -- patient data --------------------------------------------------------------------------


def test_no_patient_data_in_the_logs_of_run_workers_and_scp(migration: Migration) -> None:
    for where, text in migration.outputs.items():
        assert_no_patient_data(where, text)


def test_no_patient_data_in_store_output_at_info(tmp_path: Path) -> None:
    files = patient_corpus(tmp_path / "in", 6, seed=4)
    (tmp_path / "in" / "truncated.dcm").write_bytes(files[0].read_bytes()[:300])
    with start_migrator_scp(tmp_path / "scp", "--fail-status", "C000", "--fail-every", "3") as scp:
        proc = run_migrator(
            "store",
            *common_args((scp.host, scp.port), scp.ae_title),
            "--dir",
            tmp_path / "in",
            "--retries",
            "0",
            "-v",
            "--report",
            tmp_path / "store.json",
        )
        scp_log = scp.stop()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "INFO migrator.files: failed " in proc.stderr  # -v: a line per file, with reasons
    assert_no_patient_data("migrator store -v", proc.stdout + proc.stderr)
    assert_no_patient_data("migrator scp log", scp_log)
    assert_no_patient_data("store --report", (tmp_path / "store.json").read_text())


# -- AE titles -----------------------------------------------------------------------------

BAD_AE_TITLES = [
    ("THIS-IS-SEVENTEEN", "longer than 16"),
    ("BAD\\AE", "not allowed"),
    ("TAB\tAE", "not allowed"),
    ("NUL\x00AE", "not allowed"),
    ("NEWLINE\n", "not allowed"),  # a regular expression's "$" matches before it
    ("ÉCHO", "not allowed"),
    ("    ", "is empty"),
]
AE_OPTIONS = [
    ("store", "--called-ae", ["--host", "h", "x.dcm"]),
    ("store", "--calling-ae", ["--host", "h", "x.dcm"]),
    ("run", "--called-ae", ["--host", "h", "/nonexistent", "--dry-run"]),
    ("run", "--calling-ae", ["--host", "h", "/nonexistent", "--dry-run"]),
    ("plan", "--called-ae", ["--host", "h", "/nonexistent", "--dry-run"]),
    ("echo", "--called-ae", ["127.0.0.1", "104"]),
    ("echo", "--calling-ae", ["127.0.0.1", "104"]),
    ("scp", "--aet", ["0", "--output-dir", "/nonexistent-never-created"]),
]


@pytest.mark.parametrize(("command", "option", "rest"), AE_OPTIONS)
def test_invalid_ae_titles_are_usage_errors(command: str, option: str, rest: list[str]) -> None:
    runner = CliRunner()
    for title, expected in BAD_AE_TITLES:
        result = runner.invoke(main, [command, option, title, *rest])
        assert result.exit_code == 2, (command, option, title, result.output)
        assert expected in result.output, (command, option, title, result.output)
        assert option in result.output, result.output  # the message names the option
        assert "Traceback" not in result.output


def test_invalid_ae_title_from_the_environment_is_a_usage_error() -> None:
    for env, args in (
        ("MIGRATOR_CALLED_AE", ["store", "--host", "h", "x.dcm"]),
        ("MIGRATOR_CALLING_AE", ["echo", "127.0.0.1"]),
        ("MIGRATOR_SCP_AET", ["scp", "0"]),
    ):
        result = CliRunner().invoke(main, args, env={env: "WAY-TOO-LONG-AE-TITLE"})
        assert result.exit_code == 2, (env, result.output)
        assert "longer than 16" in result.output, result.output


def test_valid_ae_titles_are_accepted_as_is(tmp_path: Path) -> None:
    for title in ("A", "SIXTEEN-CHARS-AE", "MY SCP", "a_b.c-d*e+f=g", "  PADDED  "):
        # (An existing folder: a source that does not exist is itself a usage error.)
        result = CliRunner().invoke(
            main, ["run", "--host", "h", "--called-ae", title, str(tmp_path), "--dry-run"]
        )
        assert result.exit_code == 0, (title, result.output)  # an inventory, nothing sent
