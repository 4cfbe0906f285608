"""``migrator run`` / ``plan`` / ``worker``: the distributed migration's front ends."""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
import redis

from migrator.commands.common import (
    CONCURRENCY,
    DURATION,
    REDIS_URL_SECRET_HINT,
    fail_config,
    opt,
    report_option,
    send_options,
    settings_from_options,
    setup_logging,
    tls_options,
)
from migrator.errors import ConfigError, JobGone, MigratorError
from migrator.exitcodes import EXIT_CODES_HELP, ExitStatus
from migrator.settings import Settings

if TYPE_CHECKING:
    from migrator.ledger import Ledger
    from migrator.outcomes import FileOutcome, StoreResult
    from migrator.planner import PlanSummary
    from migrator.report import ReportData
    from workers.local import LocalWorkers

F = TypeVar("F", bound=Callable[..., Any])

#: Associations per sending process of a job (measured: bench/RESULTS.md, issue 14).
DEFAULT_CONCURRENCY = 2

#: Where an embedded run keeps its Redis data, so the same command resumes the same job.
DEFAULT_STATE_DIR = os.path.join(
    os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "pacs-migrator"
)


def _config(o: dict[str, Any], *, check_tls: bool) -> Settings:
    """The job's settings from the command's options; bad values fail here (exit 2), not
    in a worker. ``check_tls``: the TLS files are read here too (local workers)."""
    return settings_from_options(
        o,
        check_tls=check_tls,
        max_associations=o["max_associations"],
        concurrency=o["concurrency"],
        give_up_after=o["give_up_after"],
    )


def _same_tls(ledger: Ledger, config: Settings) -> Ledger:
    """A resumed job keeps the config it was created with: refuse to resume it with other
    TLS settings rather than silently send in plain TCP (or with other certificates)."""
    created = Settings.from_dict(ledger.config()).tls_settings
    if created != config.tls_settings:
        how = f"with TLS ({created.describe()})" if created else "without TLS"
        raise ConfigError(
            f"job {ledger.job_id} was created {how}; give the same --tls options or another --job"
        )
    return ledger


def _redis_failure(exc: redis.RedisError, url: str | None) -> NoReturn:
    """A clear line instead of a traceback, exit 3. Neither redis-py's messages nor the
    URL as shown carry the password. A refused password is said as such: it is not
    retried (migrator.redis_client.connect), so it is the first error the user sees."""
    from migrator.commands.jobs import _safe_url
    from migrator.redis_client import NOT_RETRIED

    where = f"Redis at {_safe_url(url)}" if url else "the embedded Redis"
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


def job_options(func: F) -> F:
    """Options of `plan` and `run`: the destination (as `store`), the job, the batches."""
    for decorator in reversed(
        [
            click.argument("sources", nargs=-1, metavar="[SOURCE]..."),
            send_options,
            tls_options,
            opt(
                "--manifest",
                "manifests",
                env="MANIFEST",
                multiple=True,
                type=click.Path(dir_okay=False),
                help="A list of files to migrate (NDJSON or CSV with a 'uri' column; optional "
                "size, sop_instance_uid, study_instance_uid), e.g. from the old PACS's database "
                "or an S3 inventory. Planned without reading the files; repeatable.",
            ),
            opt(
                "--job",
                env="JOB",
                default=None,
                help="Job id. Default: derived from the sources and the destination, so the "
                "same command again resumes the same job and sends nothing twice.",
            ),
            opt(
                "--batch-files",
                env="BATCH_FILES",
                type=click.IntRange(1, 10000),
                default=200,
                show_default=True,
                help="Files per batch (one task).",
            ),
            opt(
                "--batch-mb",
                env="BATCH_MB",
                type=click.IntRange(1),
                default=256,
                show_default=True,
                help="MB per batch at most.",
            ),
            opt(
                "--max-associations",
                env="MAX_ASSOCIATIONS",
                type=click.IntRange(1),
                default=None,
                help="At most this many simultaneous associations to the PACS, fleet-wide.",
            ),
            opt(
                "--concurrency",
                "-j",
                env="CONCURRENCY",
                type=CONCURRENCY,
                default=DEFAULT_CONCURRENCY,
                show_default=True,
                help="Associations each sending process keeps busy from one thread (each "
                "worker process, and run's own while its workers boot), 1-64, or auto: as "
                "many as the PACS and the link reward (more while throughput grows, fewer "
                "on 0xA7xx, busy rejections or rising latency, told to the whole fleet); "
                "all of them stay under --max-associations and the rate limits.",
            ),
            opt(
                "--give-up-after",
                env="GIVE_UP_AFTER",
                type=DURATION,
                default=None,
                help="When the PACS keeps failing (every sender's circuit breaker for it "
                "open: out of resources, no answers, refused) for this long, end the job: "
                "its unsent files fail with the reason (e.g. 30m). Default: wait for it "
                "to recover, probing it with growing pauses (up to 30 s).",
            ),
            opt(
                "--dry-run",
                env="DRY_RUN",
                is_flag=True,
                help="Only list and inspect: print an inventory, send nothing.",
            ),
            click.option("-v", "--verbose", count=True),
            click.option("-q", "--quiet", is_flag=True),
        ]
    ):
        func = decorator(func)
    return func


def _redis_option(required: bool) -> Callable[[F], F]:
    return opt(
        "--redis-url",
        "--broker",
        "redis_url",
        env="REDIS_URL",
        required=required,
        default=None,
        help="Redis used as broker, ledger and limiter (redis://host:6379/0)."
        + (
            ""
            if required
            else " Without it, an embedded Redis and --workers local worker "
            "processes are started and stopped."
        )
        + REDIS_URL_SECRET_HINT,
    )


@click.command("plan", epilog=EXIT_CODES_HELP)
@job_options
@_redis_option(required=False)
def plan_command(sources: tuple[str, ...], **o: Any) -> None:
    """Plan a job into Redis and enqueue its batches for the workers; do not wait.

    Planning the same sources again adds only files not planned before.

    \b
    Examples:
      migrator plan /archive --host pacs --port 104 --called-ae PACS \\
          --redis-url redis://redis:6379/0
      migrator plan s3://bucket/2019/ --s3-endpoint http://minio:9000 --host pacs \\
          --called-ae PACS --redis-url redis://redis:6379/0 --rate-limit 200
      migrator plan /archive --host pacs --called-ae PACS --dry-run
    """
    from migrator import engine
    from migrator.redis_client import connect

    setup_logging(o["verbose"], o["quiet"])
    config = _config(o, check_tls=False)  # the cluster's workers read the TLS files
    srcs = _make_sources(sources, config)
    if o["dry_run"]:
        _dry_run(srcs, o)
    if not o["redis_url"]:
        fail_config("plan needs --redis-url (or MIGRATOR_REDIS_URL), unless --dry-run")
    job_id = o["job"] or engine.default_job_id(_sources_given(sources, o), config)
    try:
        ledger = _same_tls(engine.open_job(connect(o["redis_url"]), job_id, config), config)
        summary = _plan(ledger, srcs, o["redis_url"], o)
    except ConfigError as exc:
        fail_config(str(exc))
        return
    except MigratorError as exc:
        click.echo(f"migrator: error: {exc}", err=True)
        raise SystemExit(int(ExitStatus.CANNOT_CONNECT)) from None
    except redis.RedisError as exc:
        _redis_failure(exc, o["redis_url"])
    click.echo(
        f"job {job_id}: {summary.planned_new} files planned in {summary.batches} batches, "
        f"{summary.already_planned} already planned, {summary.refused} refused"
    )
    click.echo(job_id)


def _make_sources(sources: tuple[str, ...], config: Settings) -> list[Any]:
    from migrator import engine

    try:
        return engine.make_sources(sources, config)
    except ConfigError as exc:
        fail_config(str(exc))
        raise


def _plan(
    ledger: Ledger | None, srcs: list[Any], url: str | None, o: dict[str, Any]
) -> PlanSummary:
    from migrator import engine

    enqueue = None
    if url and ledger is not None:
        from workers.app import enqueuer

        enqueue = enqueuer(url, ledger.job_id)
    bad: list[str] = []

    def on_bad_line(line: Any) -> None:
        # Never fatal: reported (the first ones in full) and counted.
        if len(bad) < 20:
            click.echo(f"migrator: manifest {line}", err=True)
        bad.append(str(line))

    summary = engine.plan_job(
        ledger,
        srcs,
        enqueue,
        manifests=o["manifests"],
        batch_files=o["batch_files"],
        batch_bytes=o["batch_mb"] * 1024 * 1024,
        on_bad_line=on_bad_line,
    )
    if len(bad) > 20:
        click.echo(f"migrator: ... {len(bad) - 20} more bad manifest lines", err=True)
    return summary


def _sources_given(sources: tuple[str, ...], o: dict[str, Any]) -> list[str]:
    """What identifies the job's input (its default id): sources and manifests."""
    if not sources and not o["manifests"]:
        fail_config("nothing to migrate: give SOURCE folders / s3:// prefixes or --manifest")
    return [*sources, *(f"manifest:{os.path.abspath(m)}" for m in o["manifests"])]


@contextlib.contextmanager
def _broker(
    redis_url: str | None,
    workers: int | None,
    state_dir: str,
    *,
    quiet: bool,
    verbose: int,
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
            embedded = stack.enter_context(EmbeddedRedis(data_dir=state_dir))
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
            # Not waited for here: the job is planned while the worker boots (run_command
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


@click.command("run", epilog=EXIT_CODES_HELP)
@job_options
@_redis_option(required=False)
@opt(
    "--workers",
    env="WORKERS",
    type=click.IntRange(1, 256),
    default=None,
    help="Local worker processes (default with the embedded Redis: CPU count; with "
    "--redis-url: none, the cluster's workers send).",
)
@opt(
    "--state-dir",
    env="STATE_DIR",
    type=click.Path(file_okay=False),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where the embedded Redis keeps the ledger between runs.",
)
@opt(
    "--timeout",
    env="TIMEOUT",
    type=DURATION,
    default=None,
    help="Stop waiting after this long (a cluster goes on; embedded workers stop).",
)
@report_option
def run_command(sources: tuple[str, ...], **o: Any) -> None:
    """Migrate folders and S3 prefixes to a PACS with Celery workers, and account for
    every file.

    Plans the job into Redis (header-only inspection, batches, one task per batch), lets
    the workers send under one fleet-wide rate limit, waits with a progress line and ends
    with the same summary as `store`. Running the same command again resumes the job: what
    was stored is not sent again.

    \b
    Examples:
      migrator run /archive --host pacs --port 104 --called-ae PACS
      migrator run s3://bucket/2019/ --host pacs --called-ae PACS --rate-limit 200 \\
          --redis-url redis://redis:6379/0 --max-associations 8
      migrator run /archive --host pacs --called-ae PACS --dry-run
    """
    from migrator import engine
    from migrator.childproc import terminate_on_sigterm
    from migrator.redis_client import connect

    setup_logging(o["verbose"], o["quiet"])
    # Local workers read the TLS files here: check them before starting anything.
    config = _config(o, check_tls=o["redis_url"] is None or bool(o["workers"]))
    quiet = o["quiet"]
    job_id = o["job"] or engine.default_job_id(_sources_given(sources, o), config)
    srcs = _make_sources(sources, config)
    if o["dry_run"]:
        _dry_run(srcs, o)
    terminate_on_sigterm()  # SIGTERM unwinds like Ctrl-C: what we started is stopped
    embedded_alive: Callable[[], bool] | None = None
    t_start = time.monotonic()  # --timeout counts from here
    try:
        opened: list[Ledger] = []

        def open_and_recover(url: str) -> None:
            """The job, and (embedded: no worker is running yet) its batches left by an
            interrupted run given back to the queue now, not after the visibility timeout."""
            client = connect(url, ride_out=o["redis_url"] is not None)
            ledger = _same_tls(engine.open_job(client, job_id, config), config)
            opened.append(ledger)
            if o["redis_url"] is None and ledger.counts()["in_flight"]:
                from workers.app import enqueuer
                from workers.recovery import recover

                got = recover(url, ledger, enqueuer(url, job_id), workers_gone=True)
                if got.batches and not quiet:
                    click.echo(
                        f"recovered {got.batches} batches left by an interrupted run", err=True
                    )

        with _broker(
            o["redis_url"],
            o["workers"],
            o["state_dir"],
            quiet=quiet,
            verbose=o["verbose"],
            before_workers=open_and_recover,
        ) as (url, local, redis_alive):
            embedded_alive = redis_alive
            ledger = opened[0]
            if not quiet:
                inputs = ", ".join([*sources, *o["manifests"]])
                click.echo(f"job {job_id}: {inputs} → {config.server}", err=True)
            ledger.mark_started()
            _plan(ledger, srcs, url, o)
            if local is not None:
                from migrator.transfer.inline import send_until_ready

                # The worker boots for ~0.5 s: send from here meanwhile (transfer/inline.py).
                ends = t_start + o["timeout"] if o["timeout"] else None
                send_until_ready(
                    ledger,
                    stop=lambda: local.ready_now() or not local.alive(),
                    abandon=(lambda: time.monotonic() > ends) if ends is not None else None,
                )
                if ledger.counts()["in_flight"] > 0:  # a small job may be done already
                    local.wait_ready()
            from migrator.progress import JobProgress

            progress = JobProgress(enabled=not quiet and sys.stderr.isatty())
            health = _HealthWatch(ledger.client, config, progress, quiet=quiet)

            def on_progress(counts: dict[str, int]) -> None:
                progress.update(counts)
                health.update(counts)

            try:
                counts = engine.wait(
                    ledger,
                    on_progress=on_progress,
                    timeout=max(0.01, o["timeout"] - (time.monotonic() - t_start))
                    if o["timeout"]
                    else None,
                    alive=local.alive if local else None,
                    check=_embedded_check(redis_alive),
                    poll=0.02,  # the last outcome is seen ~10 ms after it lands, not ~50
                )
            except EmbeddedStopped:
                if local is not None:
                    local.kill()  # a soft shutdown would wait for the vanished broker
                raise
            progress.close()
            if local is not None and counts["in_flight"] == 0:
                # Every file has its outcome: the workers are idle and hold nothing unacked.
                # Killed now, waited for (until none is left) when this block ends.
                local.kill()
            stopped_why = "timeout" if local is None or local.alive() else "the workers stopped"
            if counts["in_flight"] == 0:
                ledger.mark_finished()
            # Read now: an embedded Redis is gone once this block ends.
            result, report = _read_results(ledger, config.server, o, counts["in_flight"] > 0)
    except KeyboardInterrupt:
        click.echo(
            f"\nmigrator: interrupted; run the same command again to resume job {job_id}",
            err=True,
        )
        raise SystemExit(int(ExitStatus.INTERRUPTED)) from None
    except ConfigError as exc:
        fail_config(str(exc))
        return
    except EmbeddedStopped as exc:
        click.echo(f"migrator: error: {exc}", err=True)
        raise SystemExit(int(ExitStatus.INCOMPLETE)) from None
    except JobGone as exc:
        # Not "cannot connect": Redis answers, but without the job. Outcomes are unknown.
        click.echo(f"migrator: error: {exc}", err=True)
        raise SystemExit(int(ExitStatus.PARTIAL_FAILURE)) from None
    except MigratorError as exc:
        click.echo(f"migrator: error: {exc}", err=True)
        raise SystemExit(int(ExitStatus.CANNOT_CONNECT)) from None
    except redis.RedisError as exc:
        if embedded_alive is not None and not embedded_alive():
            click.echo(f"migrator: error: {EMBEDDED_STOPPED}", err=True)
            raise SystemExit(int(ExitStatus.INCOMPLETE)) from None
        _redis_failure(exc, o["redis_url"])
    if counts["in_flight"] > 0:
        left = report.in_flight if report is not None else counts["in_flight"]
        result.fatal = (
            f"{left} files still in flight when the wait ended ({stopped_why}); "
            "run the same command again to resume"
        )
        result.fatal_exit = ExitStatus.INCOMPLETE
    elif (unusable := engine.destination_failure(result.outcomes)) is not None:
        # The PACS was never usable (down, wrong AE title...): exit 3 / 4 as `store` does,
        # and say how to send the files once it is fixed.
        reason, result.fatal_exit = unusable
        result.fatal = f"{reason}; nothing was stored. Once fixed: migrator retry {job_id}"
    from migrator.summary import render_text

    # This process ends soon: spare its exit the interpreter's full garbage collections over
    # all it read (~50 ms for 20,000 files; nothing here needs a collection to finalize it).
    atexit.register(gc.freeze)
    text = render_text(result, job_report=report)  # report: read with result's outcomes
    click.echo(text.splitlines()[0] if quiet else text)
    if result.exit_status != ExitStatus.OK and o["redis_url"] is None:
        _show_worker_log(worker_log(o["state_dir"]))
    if report is not None:
        from migrator.report import write_report

        report.fatal, report.fatal_exit = result.fatal, result.fatal_exit
        if o["report"]:
            write_report(o["report"], report)  # the format follows the extension; JSON otherwise
    raise SystemExit(int(result.exit_status))


def worker_log(state_dir: str) -> str:
    """Where an embedded run keeps its workers' log (the last run's)."""
    return os.path.join(state_dir, "workers.log")


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
    ledger: Ledger, server: str, o: dict[str, Any], incomplete: bool = False
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
        if not o["report"] and not incomplete:
            return ledger.to_store_result(server), None
        outcomes: list[FileOutcome] = []
        report = _read_report(ledger, o, outcomes)
        # This run's last word on the job: not a live view, even with files in flight.
        report.live = False
    finally:
        if collecting:
            gc.enable()
    # What Ledger.to_store_result makes: the same outcomes, started and finished stamps.
    return StoreResult(server, outcomes, started=report.started, finished=report.finished), report


def _read_report(
    ledger: Ledger, o: dict[str, Any], outcomes: list[FileOutcome] | None = None
) -> ReportData:
    from migrator.report import format_for_path, from_ledger

    json_report = bool(o["report"]) and format_for_path(o["report"]) == "json"
    return from_ledger(ledger, keep_files=json_report, redis_url=o["redis_url"], outcomes=outcomes)


def _dry_run(sources: list[Any], o: dict[str, Any]) -> None:
    from migrator import engine

    click.echo(engine.inventory_text(_plan(None, sources, None, o)))
    raise SystemExit(0)


@click.command("worker")
@_redis_option(required=True)
@opt(
    "--concurrency",
    "-c",
    env="WORKER_CONCURRENCY",
    type=click.IntRange(1, 256),
    default=None,
    help="Worker processes in this pool (default: CPU count).",
)
@opt("--loglevel", env="WORKER_LOGLEVEL", default="INFO", show_default=True)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log each file sent (-vv: also each association's negotiation).",
)
def worker_command(redis_url: str, concurrency: int | None, loglevel: str, verbose: int) -> None:
    """Run a Celery worker that sends batches (wraps `celery worker` with our settings).

    Logs one line per batch; -v one per file (its path or URI, SOP class, transfer syntax
    sent, status, milliseconds), -vv also the association negotiation.

    \b
    Example:
      migrator worker --redis-url redis://redis:6379/0 -c 4
      migrator worker --redis-url redis://redis:6379/0 -v
    """
    from migrator import env as menv
    from workers.launch import worker_argv
    from workers.metrics import worker_env

    env = worker_env(
        {
            **os.environ,
            menv.REDIS_URL: redis_url,
            menv.VERBOSE: str(verbose),
            "REMAP_SIGTERM": "SIGQUIT",
        }
    )
    args = worker_argv(concurrency or os.cpu_count() or 2, loglevel=loglevel)
    # exec: celery becomes this process, so signals reach it directly (PID 1 in a container).
    os.execve(sys.executable, args, env)
