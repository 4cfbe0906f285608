"""``migrator run`` / ``plan`` / ``worker``: the distributed migration's front ends."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import redis

from migrator.commands.common import (
    CONCURRENCY,
    DURATION,
    REDIS_URL_SECRET_HINT,
    fail,
    fail_config,
    opt,
    report_option,
    send_options,
    settings_from_options,
    setup_logging,
    tls_options,
)
from migrator.commands.dryrun import check_preview_options, coerce_preview, preview_options
from migrator.commands.jobstate import DEFAULT_STATE_DIR
from migrator.commands.session import redis_failure
from migrator.commands.sourceopts import (
    check_https,
    dicomweb_https_options,
    https_fields,
    source_options,
    study_query,
)
from migrator.errors import ConfigError, MigratorError
from migrator.exitcodes import EXIT_CODES_HELP
from migrator.settings import Settings

if TYPE_CHECKING:
    from migrator.ledger import Ledger
    from migrator.planner import PlanSummary

F = TypeVar("F", bound=Callable[..., Any])

#: Associations per sending process of a job (measured: bench/RESULTS.md, issue 14).
DEFAULT_CONCURRENCY = 2

__all__ = ["DEFAULT_CONCURRENCY", "DEFAULT_STATE_DIR", "plan_command", "run_command"]


def _config(o: dict[str, Any], *, check_tls: bool) -> Settings:
    """The job's settings from the command's options; bad values fail here (exit 2), not
    in a worker. ``check_tls``: the TLS files are read here too (local workers)."""
    _priority_list(o["priority_list"])  # a missing file: exit 2 before anything starts
    config = settings_from_options(
        o,
        check_tls=check_tls,
        max_associations=o["max_associations"],
        concurrency=o["concurrency"],
        give_up_after=o["give_up_after"],
        **https_fields(o),
        schedule=_schedule(o["schedule"]),
        # (a priority list orders a listing too: run's own sender then starts at the head)
        order="priority-list" if o["priority_list"] and o["order"] == "listing" else o["order"],
        priority=o["priority"],
    )
    if check_tls:
        check_https(config)
    return config


def _priority_list(path: str | None) -> frozenset[str]:
    if not path:
        return frozenset()
    from migrator.ordering import read_priority_list

    try:
        return read_priority_list(path)
    except ConfigError as exc:
        fail_config(str(exc))


def _schedule(value: str | None) -> str | None:
    """``--schedule``: a YAML file or the inline syntax, checked now (exit 2), kept as text."""
    if not value:
        return None
    from migrator.limits.schedule import load

    try:
        return load(value).text()
    except ConfigError as exc:
        fail_config(str(exc))


def _same_tls(ledger: Ledger, config: Settings) -> Ledger:
    """A resumed job keeps the config it was created with: refuse to resume it with other
    TLS settings rather than silently send in plain TCP (or with other certificates)."""
    job = Settings.from_dict(ledger.config())
    created = job.tls_settings
    if created != config.tls_settings:
        how = f"with TLS ({created.describe()})" if created else "without TLS"
        raise ConfigError(
            f"job {ledger.job_id} was created {how}; give the same --tls options or another --job"
        )
    # The same for --coerce: its workers apply the rules the job was created with.
    if (job.coerce, job.coerce_digest) != (config.coerce, config.coerce_digest):
        how = f"with --coerce {job.coerce}" if job.coerce else "without --coerce"
        raise ConfigError(
            f"job {ledger.job_id} was created {how} (those rules, unchanged); give the same "
            "--coerce or another --job"
        )
    # And --precheck: a worker checks (or not) as the job says, whatever this command says.
    if job.precheck != config.precheck:
        how = "with" if job.precheck else "without"
        raise ConfigError(
            f"job {ledger.job_id} was created {how} --precheck; give the same or another --job"
        )
    # And --priority: its batches go to the queue of the class it was created with (left
    # out, the job's own class applies; given and different, it would be ignored).
    source = _source("priority")
    if source in _GIVEN and job.priority != config.priority:
        from_env = source is click.core.ParameterSource.ENVIRONMENT
        raise ConfigError(priority_refusal(ledger.job_id, job.priority, config.priority, from_env))
    return ledger


def priority_refusal(job_id: str, created: str, asked: str, from_env: bool) -> str:
    """Why a resumed job refuses another class. ``from_env``: the class came from
    MIGRATOR_PRIORITY, not --priority: "leave --priority out" would not help there."""
    if from_env:
        return (
            f"job {job_id} was created with --priority {created}; a job keeps its class: "
            f"MIGRATOR_PRIORITY={asked} asks for another: unset it, set it to {created}, "
            "or give another --job"
        )
    return (
        f"job {job_id} was created with --priority {created}; a job keeps its "
        f"class: leave --priority out, give --priority {created}, or another --job"
    )


#: Where an option given by the user comes from (not left at its default)
_GIVEN = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)


def _source(option: str) -> click.core.ParameterSource | None:
    """Where ``option``'s value came from (None outside a command)."""
    ctx = click.get_current_context(silent=True)
    return ctx.get_parameter_source(option) if ctx is not None else None


def job_options(func: F) -> F:
    """Options of `plan` and `run`: the destination (as `store`), the job, the batches."""
    for decorator in reversed(
        [
            click.argument("sources", nargs=-1, metavar="[SOURCE]..."),
            send_options,
            dicomweb_https_options,
            source_options,
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
                "--schedule",
                env="SCHEDULE",
                default=None,
                metavar="FILE|WINDOWS",
                help="Limits by time window, applied by every worker at the same instant "
                "(Redis's clock): a YAML file, or inline: "
                "'tz=Europe/Berlin; Mon-Fri 07:00-19:00 rate=20 assoc=2; * rate=400 assoc=16'. "
                "The first window that matches applies; rate=0 sends nothing; +0s-2h is a "
                "span after the start. `migrator limit` overrides it until the next window. "
                "See docs/weeks-long.md.",
            ),
            opt(
                "--order",
                env="ORDER",
                type=click.Choice(["newest-study-first", "oldest-first", "listing"]),
                default="listing",
                show_default=True,
                help="Which files go first: the newest studies (by Study Date; clinicians "
                "ask for recent ones), the oldest, or as the sources list them (streamed: "
                "sending starts while listing goes on; the others list everything first).",
            ),
            opt(
                "--priority-list",
                env="PRIORITY_LIST",
                type=click.Path(dir_okay=False),
                default=None,
                help="A file of StudyInstanceUIDs, AccessionNumbers or PatientIDs (one a "
                "line, # comments): their files go before all others (then --order).",
            ),
            opt(
                "--priority",
                env="PRIORITY",
                type=click.Choice(["high", "normal", "low"]),
                default="normal",
                show_default=True,
                help="The job's class among jobs sharing one fleet: every worker takes the "
                "batches of a high job before a normal one's, a normal before a low (the "
                "batches being sent finish first), e.g. --priority high for a ward's "
                "studies while the archive migrates at --priority low. Set when the job "
                "is created: a resumed job keeps its class (another --priority is refused).",
            ),
            opt(
                "--dry-run",
                env="DRY_RUN",
                is_flag=True,
                help="Only list and inspect: print an inventory, send and plan nothing; "
                "with --coerce also what the rules do to a sample of the files (--sample, "
                "values masked unless --show-phi), exit 1 if they fail on one.",
            ),
            preview_options,
            opt(
                "--no-preflight",
                env="NO_PREFLIGHT",
                is_flag=True,
                help="Do not C-ECHO the destination before planning (by default a PACS "
                "that cannot be reached or rejects the association ends the command at "
                "once, exit 3 or 4, as `migrator echo` would).",
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
    from migrator.commands.session import PreflightFailed
    from migrator.redis_client import connect

    setup_logging(o["verbose"], o["quiet"])
    config = _config(o, check_tls=False)  # the cluster's workers read the TLS files
    check_preview_options(o)
    srcs = _make_sources(sources, config, o)
    if o["dry_run"]:
        _dry_run(srcs, config, o)
    if not o["redis_url"]:
        fail_config("plan needs --redis-url (or MIGRATOR_REDIS_URL), unless --dry-run")
    job_id = o["job"] or engine.default_job_id(_sources_given(sources, o), config)
    try:
        client = connect(o["redis_url"])
        client.ping()  # a wrong password before anything else
        _check_existing(client, job_id, config)
        if not o["no_preflight"]:
            _preflight(config)
        ledger = engine.open_job(client, job_id, config, {"broker": _broker_name(o)})
        summary = _plan(_same_tls(ledger, config), srcs, o["redis_url"], o)
    except PreflightFailed as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(int(exc.exit_status)) from None
    except MigratorError as exc:
        fail(exc)
    except redis.RedisError as exc:
        redis_failure(exc, o["redis_url"])
    click.echo(
        f"job {job_id}: {summary.planned_new} files planned in {summary.batches} batches, "
        f"{summary.already_planned} already planned, {summary.refused} refused"
    )
    click.echo(job_id)


def _make_sources(sources: tuple[str, ...], config: Settings, o: dict[str, Any]) -> list[Any]:
    """The sources, and a usage error (exit 2) for a folder, file or manifest that does not
    exist: a mistyped path is not a job with one failed file."""
    from migrator import engine

    missing = [
        path
        for path in (*sources, *o["manifests"])
        if "://" not in path and not os.path.lexists(path)
    ]
    if missing:
        fail_config(f"no such file or directory: {', '.join(missing)}")
    try:
        return engine.make_sources(sources, config, study_query(o))
    except ConfigError as exc:
        fail_config(str(exc))


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
        order=o["order"],
        first=_priority_list(o["priority_list"]),
    )
    if len(bad) > 20:
        click.echo(f"migrator: ... {len(bad) - 20} more bad manifest lines", err=True)
    return summary


def _sources_given(sources: tuple[str, ...], o: dict[str, Any]) -> list[str]:
    """What identifies the job's input (its default id): sources and manifests."""
    if not sources and not o["manifests"]:
        fail_config(
            "nothing to migrate: give SOURCE folders / s3:// prefixes / dicomweb+https:// "
            "services or --manifest"
        )
    return [*sources, *(f"manifest:{os.path.abspath(m)}" for m in o["manifests"])]


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
    help="Where the embedded Redis keeps the jobs between runs (every command that looks "
    "at a job reads them there).",
)
@opt(
    "--timeout",
    env="TIMEOUT",
    type=DURATION,
    default=None,
    help="Stop waiting after this long (a cluster goes on; embedded workers stop).",
)
@opt(
    "--retry-failed",
    env="RETRY_FAILED",
    is_flag=True,
    help="Also send the job's failed files again (as `migrator retry JOB`). Without it, "
    "running the same command again sends only what has no outcome yet.",
)
@report_option
def run_command(sources: tuple[str, ...], **o: Any) -> None:
    """Migrate folders and S3 prefixes to a PACS with Celery workers, and account for
    every file.

    Plans the job into Redis (header-only inspection, batches, one task per batch), lets
    the workers send under one fleet-wide rate limit, waits with a progress line and ends
    with the same summary as `store`. Running the same command again resumes the job: what
    was stored is not sent again, failed files only with --retry-failed, and a finished
    job keeps its figures (duration, rate). Before planning, the destination is asked for
    a C-ECHO (--no-preflight: not): a wrong host, port or AE title ends the run at once.

    The job stays in --state-dir: `migrator status`, `report`, `verify`, `retry`, `jobs`,
    `limit` and `flower` find it there (the job started last without a JOB argument).

    \b
    Examples:
      migrator run /archive --host pacs --port 104 --called-ae PACS
      migrator run s3://bucket/2019/ --host pacs --called-ae PACS --rate-limit 200 \\
          --redis-url redis://redis:6379/0 --max-associations 8
      migrator run /archive --host pacs --called-ae PACS --dry-run
      migrator run /archive --host pacs --called-ae PACS --coerce rules.yaml --dry-run \\
          --sample 50 --format json
      migrator run dicomweb+https://old-pacs/dicom-web --from 2019-01-01 --to 2019-12-31 \\
          --host pacs --called-ae PACS
      migrator run /archive --host far-pacs --called-ae PACS -j auto --max-associations 32
      migrator run /archive --host pacs --called-ae PACS --order newest-study-first \\
          --schedule schedule.yaml      # docs/weeks-long.md
    """
    from migrator import engine
    from migrator.commands.session import Session, send_session

    setup_logging(o["verbose"], o["quiet"])
    # Local workers read the TLS files here: check them before starting anything.
    config = _config(o, check_tls=o["redis_url"] is None or bool(o["workers"]))
    check_preview_options(o)
    job_id = o["job"] or engine.default_job_id(_sources_given(sources, o), config)
    srcs = _make_sources(sources, config, o)
    if o["dry_run"]:
        _dry_run(srcs, config, o)
    inputs = ", ".join([*sources, *o["manifests"]])
    record = {"broker": _broker_name(o)}

    def open_job(client: redis.Redis, url: str) -> Ledger:
        _check_existing(client, job_id, config)  # a usage error before the preflight's
        if not o["no_preflight"]:
            _preflight(config)
        return _same_tls(engine.open_job(client, job_id, config, record), config)

    def prepare(ledger: Ledger, url: str) -> str | None:
        _plan(ledger, srcs, url, o)
        if not o["retry_failed"]:
            return None
        from workers.app import enqueuer

        n = engine.retry_failed(ledger, enqueuer(url, job_id))
        return f"job {job_id}: {n} failed files sent again (--retry-failed)" if n else None

    send_session(
        Session(
            command="run",
            job_id=job_id,
            config=config,
            redis_url=o["redis_url"],
            workers=o["workers"],
            state_dir=o["state_dir"],
            timeout=o["timeout"],
            quiet=o["quiet"],
            verbose=o["verbose"],
            reports=tuple(o["report"]),
            open_job=open_job,
            prepare=prepare,
            again="run the same command again",
            describe=f"job {job_id}: {inputs} → {config.server}",
            note={"destination": config.server},
        )
    )


def _check_existing(client: redis.Redis, job_id: str, config: Settings) -> None:
    """An existing job resumed with another destination or other TLS settings: the usage
    error (exit 2) comes first, before a C-ECHO with settings the job will not use."""
    from migrator import engine
    from migrator.ledger import Ledger

    ledger = Ledger(client, job_id)
    if ledger.exists():
        engine.check_resumable(ledger, config)
        _same_tls(ledger, config)


def _broker_name(o: dict[str, Any]) -> str:
    """The job's broker as kept with its settings (and shown in reports): no password."""
    from migrator.commands.jobstate import safe_url

    if o["redis_url"]:
        return safe_url(o["redis_url"])
    return f"embedded Redis in {os.path.abspath(os.path.expanduser(o['state_dir']))}"


def _preflight(config: Settings) -> None:
    """C-ECHO to the destination before planning: a wrong port, host or AE title ends the
    command within the connect / ACSE timeout (exit 3 or 4), with `migrator echo`'s line."""
    from migrator.commands.echo import preflight
    from migrator.commands.session import PreflightFailed

    failed = preflight(config)
    if failed is not None:
        message, status = failed
        raise PreflightFailed(
            f"{message}\nmigrator: nothing was planned; fix the destination (or pass "
            "--no-preflight to plan anyway)",
            status,
        )


def _dry_run(sources: list[Any], config: Settings, o: dict[str, Any]) -> None:
    import json

    from migrator import engine
    from migrator.coerce import preview as pv

    try:
        summary = _plan(None, sources, None, o)
        found = coerce_preview(sources, config, o) if config.coerce else None
    except MigratorError as exc:  # a source that cannot be listed (S3 credentials...)
        fail(exc)
    if o["output_format"] == "json":
        doc: dict[str, Any] = {"inventory": engine.summary_dict(summary)}
        if found is not None:
            doc["coercion"] = pv.as_dict(found)
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(engine.inventory_text(summary))
        if found is not None:
            click.echo("\n" + pv.render_text(found))
    raise SystemExit(found.exit_status if found is not None else 0)


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
