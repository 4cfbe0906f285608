"""The security holes of issue 15 (point 5), each closed and proven with real processes.

* no password of ``--redis-url`` in the command line (/proc/PID/cmdline, what ``ps``
  shows) of any process a `migrator run` starts, of `migrator status --watch`, or of
  `migrator worker` (which execs Celery);
* ``store -vv`` / ``-vvv`` from ``s3://`` logs neither the access key id, nor the secret
  key, nor the session token, nor a signature (botocore prints them at DEBUG);
* ``MIGRATOR_FLOWER_BASIC_AUTH`` with an empty user or password is refused;
* the state directory (``run --state-dir``) and the embedded Redis's files in it are
  0700/0600; a wider one of ours is tightened with a warning; another user's is not
  touched (a warning says so).
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrator import logfmt, synth
from migrator.proctitle import mask, masked_argv
from migrator.statedir import prepare
from tests.enginehelpers import (
    common_args,
    finish,
    only_job,
    processes_with_env,
    start_run,
    wait_until,
)
from tests.peers.migrator_scp import RunningScp, start_migrator_scp
from tests.peers.redis import redis_peer
from tests.peers.s3 import REGION, moto_s3_server
from tests.storehelpers import run_migrator

pytestmark = pytest.mark.timeout(180)

SECRET = f"redis-secret-{uuid.uuid4().hex[:12]}"
# Distinctive fake AWS credentials (moto accepts anything).
KEY_ID = "AKIA" + uuid.uuid4().hex[:16].upper()
AWS_SECRET = f"aws-secret-{uuid.uuid4().hex}"
SESSION_TOKEN = f"session-token-{uuid.uuid4().hex}"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": KEY_ID,
    "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    "AWS_SESSION_TOKEN": SESSION_TOKEN,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def corpus(folder: Path, count: int, seed: int = 11) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        synth.write_dataset(synth.make_dataset(seed=seed, instance_number=i), folder / f"{i}.dcm")
        for i in range(1, count + 1)
    ]


@pytest.fixture
def slow_scp(tmp_path: Path) -> Iterator[RunningScp]:
    """A receiver answering each C-STORE 150 ms late: a run of 30 files lasts seconds."""
    with start_migrator_scp(tmp_path / "scp", "--response-delay", "150") as scp:
        yield scp


# -- 1. no password in any process's command line --------------------------------------------


class CmdlineWatch:
    """Reads the command line of every process carrying ``marker`` in its environment,
    again and again; remembers each process seen and any command line holding ``secret``."""

    def __init__(self, marker: str, secret: str) -> None:
        self.marker, self.secret = marker, secret
        self.seen: dict[int, str] = {}
        self.leaks: dict[int, str] = {}

    def poll(self) -> None:
        for pid in processes_with_env(self.marker):
            line = cmdline(pid)
            if not line:
                continue
            self.seen.setdefault(pid, line)
            if self.secret in line:
                self.leaks[pid] = line


def test_no_redis_password_in_the_command_line_of_any_process_of_a_run(
    slow_scp: RunningScp, tmp_path: Path
) -> None:
    marker = f"MIGRATOR_TEST_MARKER_{uuid.uuid4().hex}"
    env = {marker: "1"}
    source = tmp_path / "src"
    corpus(source, 30)
    with redis_peer(tmp_path / "redis", password=SECRET) as redis:
        url = f"redis://:{SECRET}@127.0.0.1:{redis.port}/0"
        assert SECRET in url
        proc = start_run(
            source,
            *common_args((slow_scp.host, slow_scp.port), slow_scp.ae_title),
            "--redis-url",
            url,
            "--workers",
            "1",
            env=env,
        )
        watch = CmdlineWatch(marker, SECRET)
        status: subprocess.Popen[str] | None = None
        try:
            # Once the job is in Redis, `run` is long past its start-up (the title is
            # rewritten before the command is even imported).
            job = only_job(redis.client()).job_id
            watch_args = ["status", job, "--watch", "--interval", "0.5", "--redis-url", url]
            status = subprocess.Popen(
                [sys.executable, "-m", "migrator", *watch_args],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, **env},
            )
            time.sleep(1.0)  # `status` past its start-up too
            while proc.poll() is None:
                watch.poll()
                time.sleep(0.1)
        finally:
            if status is not None:
                status.terminate()
                status.wait(10)
            code, out = finish(proc, timeout=120)
    assert code == 0, out
    assert not watch.leaks, f"the password is visible in ps: {watch.leaks}"
    lines = list(watch.seen.values())
    assert proc.pid in watch.seen and "redis://:***@127.0.0.1" in watch.seen[proc.pid], lines
    assert status is not None and status.pid in watch.seen, lines
    assert "redis://:***@127.0.0.1" in watch.seen[status.pid], lines
    # run, the worker (behind its parent-death trampoline) and its pool child at least
    assert sum("workers.launch" in line or "celery" in line for line in lines) >= 2, lines
    assert SECRET not in out


def test_no_redis_password_in_the_command_line_of_migrator_worker(tmp_path: Path) -> None:
    """`migrator worker` execs Celery with the URL in the environment only."""
    marker = f"MIGRATOR_TEST_MARKER_{uuid.uuid4().hex}"
    with redis_peer(tmp_path / "redis", password=SECRET) as redis:
        url = f"redis://:{SECRET}@127.0.0.1:{redis.port}/0"
        log = tmp_path / "worker.log"
        with open(log, "wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "migrator", "worker", "--redis-url", url, "-c", "1"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, marker: "1", "MIGRATOR_SOFT_SHUTDOWN": "1"},
                start_new_session=True,
            )
        watch = CmdlineWatch(marker, SECRET)
        try:
            wait_until(
                lambda: len(processes_with_env(marker)) >= 2 and "ready" in log.read_text(),
                60,
                f"the worker and its pool child ({log.read_text()[-2000:]})",
            )
            for _ in range(10):
                watch.poll()
                time.sleep(0.1)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(5)
    assert not watch.leaks, f"the password is visible in ps: {watch.leaks}"
    assert worker.pid in watch.seen and "celery" in watch.seen[worker.pid], watch.seen
    assert len(watch.seen) >= 2, watch.seen
    assert SECRET not in log.read_text()


def test_the_process_title_masks_every_url_password() -> None:
    argv = ["python", "-m", "migrator", "run", "/a", "--redis-url", f"redis://:{SECRET}@r:6379/0"]
    assert masked_argv(argv) == [*argv[:-1], "redis://:***@r:6379/0"]
    assert masked_argv(["migrator", "jobs", "--redis-url", "redis://r:6379/0"]) is None
    assert mask(f"--redis-url=rediss://user:{SECRET}@r/0") == "--redis-url=rediss://user:***@r/0"
    assert mask(f"redis://:p@ss{SECRET}@r/0") == "redis://:***@r/0"  # '@' in the password
    assert mask(f"redis://r/0?password={SECRET}&db=1") == "redis://r/0?password=***&db=1"
    assert mask("s3://bucket/a:b@c.dcm") == "s3://bucket/a:b@c.dcm"  # no user information


def test_hide_secrets_rewrites_only_the_arguments_in_place() -> None:
    """/proc/self/cmdline masked, NUL-separated as before; sys.argv and the environment
    (also /proc/self/environ) untouched; a command line without a password is left alone."""
    code = (
        "import os, sys, time\n"
        "from migrator.proctitle import hide_secrets\n"
        "t = time.perf_counter(); done = hide_secrets(); t = time.perf_counter() - t\n"
        "line = open('/proc/self/cmdline', 'rb').read().rstrip(b'\\0').split(b'\\0')\n"
        "env = open('/proc/self/environ', 'rb').read()\n"
        "print(done, [a.decode() for a in line], sys.argv[-1], b'MARKER=kept' in env, t)\n"
    )
    results = []
    for url in (f"redis://:{SECRET}@r/0", "redis://r/0"):
        proc = subprocess.run(
            [sys.executable, "-c", code, "--redis-url", url],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "MARKER": "kept"},
        )
        results.append(proc.stdout)
    masked, plain = results
    assert masked.startswith(
        f"True ['{sys.executable}', '-c', {code!r}, '--redis-url', 'redis://:***@r/0'] "
        f"redis://:{SECRET}@r/0 True "
    ), masked
    assert float(masked.split()[-1]) < 0.01  # ~0.1 ms
    assert plain.startswith("False "), plain


# -- 2. no AWS credential in -vv logs --------------------------------------------------------


@pytest.mark.parametrize(
    ("verbosity", "log_format"), [("-vv", "text"), ("-vvv", "json")], ids=["vv-text", "vvv-json"]
)
def test_store_from_s3_at_debug_never_logs_aws_credentials(
    tmp_path: Path, verbosity: str, log_format: str
) -> None:
    files = corpus(tmp_path / "src", 3, seed=12)
    with (
        moto_s3_server() as s3,
        start_migrator_scp(tmp_path / "scp") as scp,
    ):
        bucket = s3.create_bucket()
        s3.put_many(bucket, ((f"in/{p.name}", p.read_bytes()) for p in files))
        proc = run_migrator(
            "store",
            *common_args((scp.host, scp.port), scp.ae_title),
            f"s3://{bucket}/in/",
            "--s3-endpoint",
            s3.endpoint,
            "--s3-region",
            REGION,
            verbosity,
            env={**AWS_ENV, "MIGRATOR_LOG_FORMAT": log_format},
        )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Total Files: 3" in proc.stdout
    # Before the fix this output held botocore's request headers: the key id in every
    # Authorization header, the session token in X-Amz-Security-Token.
    for secret in (KEY_ID, AWS_SECRET, SESSION_TOKEN):
        assert secret not in output, f"{secret[:8]}… in the {verbosity} output:\n{output[-3000:]}"
    assert "Signature=" not in output or "Signature=***" in output


def test_the_log_filter_masks_credentials_even_if_botocore_logs_at_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Defence in depth: a library logger someone sets to DEBUG again still prints
    nothing secret (botocore's request line, as it writes it)."""
    saved = {name: os.environ.get(name) for name in AWS_ENV}
    os.environ.update(AWS_ENV)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        logfmt.configure(logging.DEBUG, "text")
        logging.getLogger("botocore").setLevel(logging.DEBUG)
        logging.getLogger("botocore.endpoint").debug(
            "Sending http request: %s",
            "<AWSPreparedRequest method=GET, url=http://127.0.0.1:1/b?X-Amz-Credential="
            f"{KEY_ID}%2F20240101&X-Amz-Signature=0123abcd, headers={{'Authorization': "
            f"b'AWS4-HMAC-SHA256 Credential={KEY_ID}/20240101/us-east-1/s3/aws4_request, "
            f"SignedHeaders=host, Signature=deadbeef', 'X-Amz-Security-Token': "
            f"b'{SESSION_TOKEN}'}}>",
        )
        try:
            raise RuntimeError(f"boom with {AWS_SECRET}")
        except RuntimeError:
            logging.getLogger("migrator.test").exception("failed")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        logging.getLogger("botocore").setLevel(logging.NOTSET)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    err = capsys.readouterr().err
    assert "Sending http request" in err and "boom with ***" in err, err
    for secret in (KEY_ID, AWS_SECRET, SESSION_TOKEN, "deadbeef", "0123abcd"):
        assert secret not in err, err


def test_the_aws_loggers_are_pinned_at_warning() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        logfmt.configure(logging.DEBUG, "text")
        for name in ("botocore", "boto3", "s3transfer", "urllib3"):
            assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


# -- 3. Flower's basic auth ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (":", "an empty user name"),
        ("admin:", "an empty password"),
        (":pw", "an empty user name"),
        (" : ", "an empty user name"),
        ("admin:  ", "an empty password"),
        ("admin", "no ':'"),
        ("", "is not set"),
        ("admin:pw,:x", "an empty user name (user 2 of 2)"),
        ("admin:pw,ops:", "an empty password (user 2 of 2)"),
    ],
)
def test_flower_refuses_an_empty_user_or_password(value: str, problem: str) -> None:
    proc = run_migrator(
        "flower",
        "--redis-url",
        "redis://127.0.0.1:1/0",
        env={"MIGRATOR_FLOWER_BASIC_AUTH": value},
        timeout=30,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert problem in proc.stderr, proc.stderr
    assert "user:password" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- 4. the state directory ------------------------------------------------------------------


def run_embedded(
    scp: RunningScp, source: Path, state_dir: Path, env: dict[str, str] | None = None
) -> tuple[int, str]:
    proc = start_run(
        source,
        *common_args((scp.host, scp.port), scp.ae_title),
        "--state-dir",
        state_dir,
        "--workers",
        "1",
        env={"MIGRATOR_EMBEDDED_REDIS": "redis-server", **(env or {})},
    )
    return finish(proc, timeout=120)


def modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        if not path.is_symlink():
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_a_new_state_directory_and_its_files_are_private(tmp_path: Path) -> None:
    source = tmp_path / "src"
    corpus(source, 3, seed=13)
    base = tmp_path / "base"
    base.mkdir(mode=0o755)
    base.chmod(0o755)
    state = base / "made" / "by" / "run"
    with start_migrator_scp(tmp_path / "scp") as scp:
        old = os.umask(0o022)  # the usual umask, inherited by the run
        try:
            code, out = run_embedded(scp, source, state)
        finally:
            os.umask(old)
    assert code == 0, out
    assert "state directory" not in out  # nothing to warn about
    for parent in (base / "made", base / "made" / "by"):  # the parents we created
        assert stat.S_IMODE(parent.stat().st_mode) == 0o700, parent
    assert stat.S_IMODE(base.stat().st_mode) == 0o755  # not ours to change
    found = modes(state)
    assert any("appendonly" in name for name in found), found  # the AOF is there
    for name, mode in found.items():
        path = state / name
        expected = 0o700 if path.is_dir() else 0o600
        assert mode == expected, (name, oct(mode), found)


def test_a_wider_state_directory_of_ours_is_tightened_with_a_warning(tmp_path: Path) -> None:
    source = tmp_path / "src"
    corpus(source, 3, seed=14)
    state = tmp_path / "state"
    with start_migrator_scp(tmp_path / "scp") as scp:
        code, out = run_embedded(scp, source, state)
        assert code == 0, out
        # What an earlier version (or a umask of 022 and a mkdir by hand) left behind.
        state.chmod(0o755)
        for path in state.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        # Not a state file: a --state-dir that holds other things leaves them alone.
        (state / "notes.txt").write_text("mine")
        (state / "notes.txt").chmod(0o644)
        code, out = run_embedded(scp, source, state)
    assert code == 0, out
    assert f"state directory {state} was open to other users (mode 0755): changed to 0700" in out
    found = modes(state)
    assert found.pop("notes.txt") == 0o644
    assert any("appendonly" in name for name in found), found
    for name, mode in found.items():
        path = state / name
        assert mode == (0o700 if path.is_dir() else 0o600), (name, oct(mode))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_state_directory_of_another_user_is_never_changed(tmp_path: Path) -> None:
    state = tmp_path / "shared"
    state.mkdir()
    state.chmod(0o755)
    os.chown(state, 65534, 65534)  # nobody
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("migrator.statedir")
    logger.addHandler(handler)
    try:
        assert prepare(state) == state
    finally:
        logger.removeHandler(handler)
    assert stat.S_IMODE(state.stat().st_mode) == 0o755
    assert [r.levelname for r in records] == ["WARNING"]
    message = records[0].getMessage()
    assert f"state directory {state} (mode 0755) belongs to another user (uid 65534)" in message


def test_a_state_directory_that_cannot_be_created_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    state = blocker / "state"
    proc = run_migrator(
        "run",
        str(tmp_path),
        "--host",
        "127.0.0.1",
        "--port",
        "1",
        "--state-dir",
        state,
        env={"MIGRATOR_EMBEDDED_REDIS": "redis-server"},
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"cannot create state directory {state}: Not a directory" in proc.stderr
    assert "Traceback" not in proc.stderr
