"""One sending session of a job: the Redis, local workers, `run`'s own sending while they
boot, the wait with a progress line, the summary, the reports and the exit code.

`migrator run` (plan, then send) and `migrator retry` on the embedded default (put the
failed files back in flight, then send) are the same session with a different first step:
:func:`send_session` with a :class:`Session` that says how to open the job and what to do
before sending.

The job's figures (its first start, its end, the time spent sending) change only when a
session has something to send: running `run` again on a finished job reads its summary and
leaves its duration and rate as they were (``Ledger.mark_started`` / ``mark_finished``).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import click
import redis

from migrator.commands.common import fail_config
from migrator.errors import ConfigError, JobGone, MigratorError
from migrator.exitcodes import ExitStatus
from migrator.settings import Settings

if TYPE_CHECKING:
    from migrator.ledger import Ledger
    from migrator.outcomes import FileOutcome, StoreResult
    from migrator.progress import JobProgress
    from migrator.report import ReportData
    from workers.local import LocalWorkers


@dataclass
class Session:
    """What differs between `run` and `retry`."""

    #: "run" or "retry": the command, in messages and in the job's history
    command: str
    job_id: str
    config: Settings
    redis_url: str | None
    workers: int | None
    state_dir: str
    timeout: float | None
    quiet: bool
    verbose: int
    reports: tuple[str, ...]
    #: The job, once Redis answers (before any local worker starts): create or resume it
    #: (run), or find it and change its destination (retry); may raise ConfigError
    open_job: Callable[[redis.Redis, str], Ledger]
    #: What to do before sending (plan; put failed files back in flight); a line to print
    prepare: Callable[[Ledger, str], str | None]
    #: How to resume after an interruption
    again: str
    #: Printed before the job's line ("job X: sources → server")
    describe: str = ""
    #: Information kept with the session in the job's history
    note: dict[str, Any] = field(default_factory=dict)


def worker_log(state_dir: str) -> str:
    """Where an embedded run keeps its workers' log (the last run's)."""
    return os.path.join(state_dir, "workers.log")


def redis_failure(exc: redis.RedisError, url: str | None) -> NoReturn:
    """A clear line instead of a traceback, exit 3. Neither redis-py's messages nor the
    URL as shown carry the password. A refused password is said as such: it is not
    retried (migrator.redis_client.connect), so it is the first error the user sees."""
    from migrator.commands.jobstate import safe_url
    from migrator.redis_client import NOT_RETRIED

    where = f"Redis at {safe_url(url)}" if url else "the embedded Redis"
    if isinstance(exc, NOT_RETRIED):
        what = (
            f"{where} refused the credentials (authentication failed: {exc}); "
            "check the password in --redis-url / MIGRATOR_REDIS_URL"
        )
    elif isinstance(exc, redis.exceptions.NoPermissionError):
        what = f"{where}: the user in --redis-url lacks a permission: {exc}"
    else:
        what = f"{where}: {type(exc).__name__}: {exc}"
    click.echo(f"migrator: error: {what}", err=True)
    raise SystemExit(int(ExitStatus.CANNOT_CONNECT)) from None


@contextlib.contextmanager
def broker(
    redis_url: str | None,
    workers: int | None,
    state_dir: str,
    *,
    quiet: bool,
    verbose: int,
    command: str,
    before_workers: Callable[[str], None],
) -> Iterator[tuple[str, LocalWorkers | None, Callable[[], bool] | None]]:
    """The Redis to use, and the local workers started for it.

    No URL: an embedded Redis (its data kept in ``state_dir`` so that running the same
    command again resumes the job) and ``workers`` local worker processes (default: CPU
    count). With a URL: that Redis, plus local workers only when ``--workers`` is given.
    ``before_workers(url)`` runs once Redis answers, before any local worker starts.
    """
    from migrator import env as menv
    from migrator.embedded import EmbeddedRedis
    from migrator.redis_client import connect
    from workers.local import LocalWorkers

    with contextlib.ExitStack() as stack:
        if redis_url is None:
            embedded = stack.enter_context(EmbeddedRedis(data_dir=state_dir, command=command))
            url = embedded.url
            workers = workers or os.cpu_count() or 2
        else:
            url = redis_url
            # A wrong password fails here, clearly and at once, not in the local workers'
            # start-up wait (kombu's traceback) nor after the plan's first command.
            connect(url).ping()
        before_workers(url)
        local = None
        if workers:
            # Not waited for here: the job is planned while the worker boots (the session
            # waits for it before waiting for outcomes).
            # -v: the workers' per-file lines (-vv: negotiations) go to our stderr too.
            extra = {menv.VERBOSE: str(verbose)} if verbose else None
            # Embedded: the workers' log is kept with the job (this run's only), 0600.
            logfile = worker_log(state_dir) if redis_url is None else None
            if logfile is not None:
                fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.fchmod(fd, 0o600)  # also when an older one was left wider
                os.close(fd)
            local = LocalWorkers(url, workers, extra, logfile=logfile, echo=verbose > 0)
            local.start(wait=False)
            stack.push(local)
        if not quiet:
            where = f"embedded {embedded.kind}" if redis_url is None else "Redis at --redis-url"
            click.echo(f"{where}, {workers or 0} local worker processes", err=True)
        yield url, local, embedded.alive if redis_url is None else None


def send_session(s: Session) -> NoReturn:
    """Open the job, prepare it, send what is in flight, wait, summarise, exit."""
    from migrator.childproc import terminate_on_sigterm
    from migrator.progress import JobProgress
    from migrator.redis_client import connect

    terminate_on_sigterm()  # SIGTERM unwinds like Ctrl-C: what we started is stopped
    embedded_alive: Callable[[], bool] | None = None
    t_start = time.monotonic()  # --timeout counts from here
    session_start: float | None = None
    ledger: Ledger | None = None
    try:
        opened: list[Ledger] = []

        def open_and_recover(url: str) -> None:
            """The job, and (embedded: no worker is running yet) its batches left by an
            interrupted run given back to the queue now, not after the visibility timeout."""
            client = connect(url, ride_out=s.redis_url is not None)
            ledger = s.open_job(client, url)
            opened.append(ledger)
            if s.redis_url is None and ledger.counts()["in_flight"]:
                from workers.app import enqueuer
                from workers.recovery import recover

                got = recover(url, ledger, enqueuer(url, s.job_id), workers_gone=True)
                if got.batches and not s.quiet:
                    click.echo(
                        f"recovered {got.batches} batches left by an interrupted run", err=True
                    )

        with broker(
            s.redis_url,
            s.workers,
            s.state_dir,
            quiet=s.quiet,
            verbose=s.verbose,
            command=s.command,
            before_workers=open_and_recover,
        ) as (url, local, redis_alive):
            embedded_alive = redis_alive
            ledger = opened[0]
            if not s.quiet and s.describe:
                click.echo(s.describe, err=True)
            # A job that never finished starts its session now (planning counts); a finished
            # one only once there is something to send (below), so that reading it again
            # leaves its figures as they were.
            now = time.time()
            if not ledger.finished():
                session_start = ledger.mark_started(now)
            said = s.prepare(ledger, url)
            if said and not s.quiet:
                click.echo(said, err=True)
            work = ledger.counts()["in_flight"] > 0
            if work and session_start is None:
                session_start = ledger.mark_started(now)
            progress = JobProgress(enabled=not s.quiet and work)
            if local is not None and work:
                from migrator.transfer.inline import send_until_ready
                from workers.inline_events import InlineEvents

                # The worker boots for ~0.5 s: send from here meanwhile (transfer/inline.py),
                # with the progress line drawn from the first file, and each batch shown
                # in Flower as a worker's would be.
                progress.follow(ledger.counts)
                ends = t_start + s.timeout if s.timeout else None
                events = InlineEvents(url, ledger.job_id)
                try:
                    send_until_ready(
                        ledger,
                        stop=lambda: local.ready_now() or not local.alive(),
                        abandon=(lambda: time.monotonic() > ends) if ends is not None else None,
                        on_batch=events.batch_done,
                    )
                    if ledger.counts()["in_flight"] > 0:  # a small job may be done already
                        local.wait_ready()
                finally:
                    events.close()
                    progress.unfollow()
            counts = (
                _wait(s, ledger, local, redis_alive, t_start, progress) if work else ledger.counts()
            )
            if local is not None and counts["in_flight"] == 0:
                # Every file has its outcome: the workers are idle and hold nothing unacked.
                # Killed now, waited for (until none is left) when this block ends.
                local.kill()
            stopped_why = "timeout" if local is None or local.alive() else "the workers stopped"
            if session_start is not None:
                ledger.mark_finished(
                    session_start,
                    complete=counts["in_flight"] == 0,
                    history={"command": s.command, **s.note},
                )
                session_start = None
            elif not s.quiet:
                click.echo(_nothing_to_send(s, counts), err=True)
            # Read now: an embedded Redis is gone once this block ends.
            result, report = _read_results(ledger, s, counts["in_flight"] > 0)
    except KeyboardInterrupt:
        _end_interrupted(ledger, session_start, s)
        click.echo(f"\nmigrator: interrupted; {s.again} to resume job {s.job_id}", err=True)
        raise SystemExit(int(ExitStatus.INTERRUPTED)) from None
    except ConfigError as exc:
        fail_config(str(exc))
        raise  # (fail_config exits)
    except EmbeddedStopped as exc:
        click.echo(f"migrator: error: {exc}", err=True)
        raise SystemExit(int(ExitStatus.INCOMPLETE)) from None
    except JobGone as exc:
        # Not "cannot connect": Redis answers, but without the job. Outcomes are unknown.
        click.echo(f"migrator: error: {exc}", err=True)
        raise SystemExit(int(ExitStatus.PARTIAL_FAILURE)) from None
    except PreflightFailed as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(int(exc.exit_status)) from None
    except MigratorError as exc:
        click.echo(f"migrator: error: {exc}", err=True)
        raise SystemExit(int(ExitStatus.CANNOT_CONNECT)) from None
    except redis.RedisError as exc:
        if embedded_alive is not None and not embedded_alive():
            click.echo(f"migrator: error: {EMBEDDED_STOPPED}", err=True)
            raise SystemExit(int(ExitStatus.INCOMPLETE)) from None
        redis_failure(exc, s.redis_url)
    _finish(s, counts, result, report, stopped_why)


def _wait(
    s: Session,
    ledger: Ledger,
    local: LocalWorkers | None,
    redis_alive: Callable[[], bool] | None,
    t_start: float,
    progress: JobProgress,
) -> dict[str, int]:
    from migrator import engine
    from migrator.ledger.readahead import ReadAhead

    health = _HealthWatch(ledger.client, s.config, progress, quiet=s.quiet)
    last: list[dict[str, int]] = []
    # The outcomes of settled batches read while waiting: the summary and report at the
    # end then read only what settled last (20,000 files: ~0.15 s less of the run's stop).
    ahead = ledger.ahead = ReadAhead(ledger)
    next_look = [0.0]

    def on_progress(counts: dict[str, int]) -> None:
        last[:] = [counts]
        progress.update(counts)
        health.update(counts)
        now = time.monotonic()
        if counts["in_flight"] > 0 and now >= next_look[0]:
            # Again at the next poll while batches keep settling; else in a tenth of a second.
            next_look[0] = now if ahead.step() else now + 0.1

    try:
        counts = engine.wait(
            ledger,
            on_progress=on_progress,
            timeout=max(0.01, s.timeout - (time.monotonic() - t_start)) if s.timeout else None,
            alive=local.alive if local else None,
            check=_embedded_check(redis_alive),
            poll=0.02,  # the last outcome is seen ~10 ms after it lands, not ~50
        )
    except EmbeddedStopped:
        if local is not None:
            local.kill()  # a soft shutdown would wait for the vanished broker
        raise
    finally:
        progress.close(last[0] if last else None)
    return counts


def _nothing_to_send(s: Session, counts: dict[str, int]) -> str:
    line = f"job {s.job_id}: nothing to send; its figures are those of its last sending"
    if counts["failed"]:
        line += (
            f". {counts['failed']} files failed: `migrator retry {s.job_id}` (or run "
            "--retry-failed) sends them again"
        )
    return line


def _end_interrupted(ledger: Ledger | None, session_start: float | None, s: Session) -> None:
    """The time spent sending until the interruption counts for the job (best effort: the
    embedded Redis may be gone already)."""
    if ledger is None or session_start is None:
        return
    with contextlib.suppress(redis.RedisError, OSError):
        ledger.mark_finished(
            session_start,
            complete=False,
            history={"command": s.command, "interrupted": True, **s.note},
        )


def _finish(
    s: Session,
    counts: dict[str, int],
    result: StoreResult,
    report: ReportData | None,
    stopped_why: str,
) -> NoReturn:
    from migrator import engine

    if counts["in_flight"] > 0:
        left = report.in_flight if report is not None else counts["in_flight"]
        result.fatal = (
            f"{left} files still in flight when the wait ended ({stopped_why}); {s.again} to resume"
        )
        result.fatal_exit = ExitStatus.INCOMPLETE
    elif (unusable := engine.destination_failure(result.outcomes)) is not None:
        # The PACS was never usable (down, wrong AE title...): exit 3 / 4 as `store` does,
        # and say how to send the files once it is fixed.
        reason, result.fatal_exit = unusable
        result.fatal = (
            f"{reason}; nothing was stored. Once fixed: migrator retry {s.job_id} "
            "(with --host/--port/--called-ae if the destination was wrong)"
        )
    from migrator.summary import render_text

    # This process ends soon: spare its exit the interpreter's full garbage collections over
    # all it read (~50 ms for 20,000 files; nothing here needs a collection to finalize it).
    atexit.register(gc.freeze)
    text = render_text(result, job_report=report)  # report: read with result's outcomes
    click.echo(text.splitlines()[0] if s.quiet else text)
    if result.exit_status != ExitStatus.OK and s.redis_url is None:
        _show_worker_log(worker_log(s.state_dir))
    if report is not None:
        report.fatal, report.fatal_exit = result.fatal, result.fatal_exit
        write_reports(s.reports, report)
    raise SystemExit(int(result.exit_status))


def write_reports(paths: tuple[str, ...], report: ReportData) -> None:
    """Each --report file (the format follows its extension), and where it went."""
    from migrator.report import write_report

    for path in paths:
        try:
            fmt = write_report(path, report)
        except OSError as exc:
            click.echo(f"migrator: error: cannot write the report {path}: {exc}", err=True)
            continue
        click.echo(f"report ({fmt}): {os.path.abspath(path)}", err=True)


def _show_worker_log(path: str, lines: int = 10) -> None:
    """The last lines of the workers' log, after a run that did not end well: what went
    wrong on their side is said there (the run itself says what became of the files)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 16384))
            tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError:
        return
    if tail:
        click.echo(f"\nLast lines of the workers' log ({path}):", err=True)
        for line in tail:
            click.echo(f"  {line}", err=True)


class _HealthWatch:
    """Says when the destination's circuit breaker opens and closes (every sender stops
    sending to a PACS that keeps failing, and probes it): a line each time, with why and how
    many files wait, instead of a progress line that stands still."""

    def __init__(self, client: redis.Redis, config: Settings, progress: Any, *, quiet: bool):
        from migrator.keys import breaker_key

        self._client = client
        self._key = breaker_key(config.destination)
        self._server = config.server
        self._progress = progress
        self._quiet = quiet
        self._next = 0.0
        self._since: float | None = None

    def update(self, counts: dict[str, int]) -> None:
        from migrator.limits.breaker import read_state

        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + 1.0
        state = read_state(self._client, self._key)
        since = state.since if state is not None else None
        if since == self._since:
            return
        self._since = since
        if self._quiet:
            return
        if state is not None:
            when = time.strftime("%H:%M:%S", time.localtime(state.since))
            line = (
                f"⚠ {self._server} failing since {when} ({state.reason}); sending paused, "
                f"probing every {state.interval:g} s or less; "
                f"{counts['in_flight']} files waiting"
            )
        else:
            line = f"✓ {self._server} answers again; sending resumed"
        self._progress.note(line)


EMBEDDED_STOPPED = (
    "the embedded Redis stopped under this run (killed?); its data is in the state "
    "directory: run the same command again to resume"
)


class EmbeddedStopped(MigratorError):
    """The embedded Redis died under a run (killed, out of memory)."""


class PreflightFailed(MigratorError):
    """The destination did not answer C-ECHO: the message as `migrator echo` prints it."""

    def __init__(self, message: str, exit_status: ExitStatus) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def _embedded_check(alive: Callable[[], bool] | None) -> Callable[[], None] | None:
    """For ``engine.wait``: a run whose embedded Redis died says so at once (a client would
    retry for ~30 s, then fail with a connection error)."""
    if alive is None:
        return None

    def check() -> None:
        if not alive():
            raise EmbeddedStopped(EMBEDDED_STOPPED)

    return check


def _read_results(
    ledger: Ledger, s: Session, incomplete: bool = False
) -> tuple[StoreResult, ReportData | None]:
    """The summary's StoreResult and (with --report) the report, from ONE read of the
    ledger: each read of 20,000 outcomes is ~0.2 s of the run's stop.

    Without cyclic garbage collections meanwhile: the read makes ~5 objects per file and
    no garbage in a cycle, so they would find nothing, and one of them goes over the whole
    heap of the run (~30 ms of a 20,000-file run's stop, measured with gc.callbacks).
    """
    from migrator.outcomes import StoreResult

    collecting = gc.isenabled()
    gc.disable()
    try:
        if not s.reports and not incomplete:
            return ledger.to_store_result(s.config.server), None
        outcomes: list[FileOutcome] = []
        report = _read_report(ledger, s.reports, outcomes)
        # This run's last word on the job: not a live view, even with files in flight.
        report.live = False
    finally:
        if collecting:
            gc.enable()
    # What Ledger.to_store_result makes: the same outcomes, started and finished stamps.
    result = StoreResult(
        s.config.server, outcomes, started=report.started, finished=report.finished
    )
    result.active = report.active_s
    return result, report


def _read_report(
    ledger: Ledger, reports: tuple[str, ...], outcomes: list[FileOutcome] | None = None
) -> ReportData:
    from migrator.report import format_for_path, from_ledger

    keep_files = any(format_for_path(p) == "json" for p in reports)
    return from_ledger(ledger, keep_files=keep_files, outcomes=outcomes)
