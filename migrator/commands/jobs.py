"""``migrator status / retry / jobs / limit``: look at and steer jobs, in a cluster's Redis
(``--redis-url``) or in the state directory of `migrator run` (the default)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from migrator.commands.common import AE, fail, fail_config, opt, report_option, setup_logging
from migrator.commands.jobstate import (
    job_ledger,
    open_jobs,
    redis_option,
    safe_url,
    state_dir_option,
)
from migrator.errors import ConfigError
from migrator.exitcodes import ExitStatus
from migrator.units import human_bytes, local_time

F = TypeVar("F", bound=Callable[..., Any])


#: Kept for older imports (check-health): see migrator.commands.jobstate.safe_url.
_safe_url = safe_url


def status_line(counts: dict[str, int], files_s: float, bytes_s: float) -> str:
    done = counts["stored"] + counts["failed"] + counts["skipped"]
    eta = counts["in_flight"] / files_s if files_s > 0 else None
    return (
        f"{done}/{counts['planned']} files: {counts['stored']} stored, {counts['failed']} failed, "
        f"{counts['skipped']} skipped, {counts['in_flight']} in flight; "
        f"{files_s:.1f} files/s, {human_bytes(bytes_s)}/s; "
        + (f"ETA {eta:.0f} s" if eta is not None else "ETA -")
    )


def job_figures(ledger: Any, counts: dict[str, int]) -> tuple[float, float, float]:
    """(seconds spent sending, files/s, bytes/s) of the job over its sessions: what a
    finished job's status says (not a rate decaying since it ended)."""
    from migrator.ledger.sessions import active_seconds

    meta = ledger.meta()
    now = time.time()
    seconds = active_seconds(meta, meta.get("finished", now))
    if seconds is None:
        seconds = max(0.0, meta.get("finished", now) - meta.get("started", now))
    if seconds <= 0:
        return 0.0, 0.0, 0.0
    return seconds, counts["stored"] / seconds, counts.get("bytes_stored", 0) / seconds


def finished_line(ledger: Any, counts: dict[str, int]) -> str:
    from migrator.units import local_time

    seconds, files_s, bytes_s = job_figures(ledger, counts)
    done = counts["stored"] + counts["failed"] + counts["skipped"]
    when = local_time(ledger.meta().get("finished"))
    return (
        f"finished {when}: {done}/{counts['planned']} files: {counts['stored']} stored, "
        f"{counts['failed']} failed, {counts['skipped']} skipped; {seconds:.1f} s sending, "
        f"{files_s:.1f} files/s, {human_bytes(bytes_s)}/s"
    )


@click.command("status")
@click.argument("job", required=False)
@redis_option
@state_dir_option
@opt("--watch", env="WATCH", is_flag=True, help="Print a line every --interval until done.")
@opt("--interval", env="INTERVAL", type=click.FloatRange(0.2), default=2.0, show_default=True)
@opt("--json", "as_json", env="STATUS_JSON", is_flag=True, help="Machine-readable output.")
def status_command(
    job: str | None,
    redis_url: str | None,
    state_dir: str,
    watch: bool,
    interval: float,
    as_json: bool,
) -> None:
    """Counts, rate and ETA of a job (JOB: an id, the start of one, or the last job).

    A running job shows the rate of its last 30 seconds and an ETA; a finished one its own
    figures (time spent sending, files/s, MB/s), which reading it never changes.

    \b
    Examples:
      migrator status                         # the last job of the default state directory
      migrator status job-3f2a9c01de --watch
      migrator status job-3f2a9c01de --redis-url redis://redis:6379/0
    """
    from migrator import control
    from migrator.engine import recent_rate
    from migrator.progress import JobProgress

    with job_ledger(redis_url, state_dir, job, "status") as (ledger, _):
        bar = JobProgress(enabled=watch and not as_json)
        job = ledger.job_id
        while True:
            counts = ledger.counts()
            finished = counts["in_flight"] <= 0 and ledger.finished()
            held = control.state(ledger.client, job)  # paused / cancelled
            window = _window(ledger)
            if as_json:
                row: dict[str, Any] = {"job": job, **counts, "finished": finished}
                row["control"] = held or "running"
                row["window"] = window
                row["priority"] = ledger.config().get("priority") or "normal"
                if finished:
                    seconds, files_s, bytes_s = job_figures(ledger, counts)
                    row["duration_s"] = round(seconds, 3)
                else:
                    files_s, bytes_s = recent_rate(ledger)
                row["files_per_s"], row["bytes_per_s"] = files_s, bytes_s
                click.echo(json.dumps(row))
            elif finished:
                bar.close()
                click.echo(f"{job}: {held + ', ' if held else ''}{finished_line(ledger, counts)}")
            elif watch:
                bar.update(counts, force=True)  # one line per --interval
            else:
                files_s, bytes_s = recent_rate(ledger)
                line = status_line(counts, files_s, bytes_s)
                click.echo(f"{job}: {held.upper() + ': ' if held else ''}{line}")
                if window:
                    click.echo(f"  {window}")
            if not watch or counts["in_flight"] <= 0:
                break
            time.sleep(interval)
        bar.close()
    raise SystemExit(int(ExitStatus.PARTIAL_FAILURE if counts["failed"] else ExitStatus.OK))


def _window(ledger: Any) -> str | None:
    """The schedule's window in force and its next change (None: no schedule)."""
    from migrator.keys import limiter_key
    from migrator.limits import schedule_redis
    from migrator.settings import Settings

    key = limiter_key(Settings.from_dict(ledger.config()).destination)
    now = schedule_redis.current(ledger.client, key)
    return schedule_redis.describe(now) if now is not None else None


@click.command("retry")
@click.argument("job", required=False)
@redis_option
@state_dir_option
@opt(
    "--in-flight",
    env="RETRY_IN_FLIGHT",
    is_flag=True,
    help="Also enqueue again the batches whose files have no outcome yet (their tasks were "
    "lost, e.g. Redis ran without persistence). Stored files are never sent twice.",
)
@opt(
    "--missing",
    env="RETRY_MISSING",
    is_flag=True,
    help="Send what the last `verify` found at the source but not at the destination (a "
    "dimse:// job's reconciliation): stored files the destination lost, failed ones, and "
    "instances added to the job's studies at the source since planning. Instead of the "
    "failed files. E.g. migrator verify && migrator retry --missing && migrator verify",
)
@opt(
    "--host",
    "new_host",
    env="RETRY_HOST",
    default=None,
    help="Send what is left to this host instead (the job's destination is changed, and "
    "the change kept in its history).",
)
@opt(
    "--port",
    "new_port",
    env="RETRY_PORT",
    type=click.IntRange(1, 65535),
    default=None,
    help="Send what is left to this port instead.",
)
@opt(
    "--called-ae",
    "new_called_ae",
    env="RETRY_CALLED_AE",
    type=AE,
    default=None,
    help="Send what is left to this AE title instead.",
)
@opt(
    "--workers",
    env="WORKERS",
    type=click.IntRange(1, 256),
    default=None,
    help="Local worker processes (embedded default: CPU count; with --redis-url: none, "
    "the cluster's workers send).",
)
@opt("--no-preflight", env="NO_PREFLIGHT", is_flag=True, help="Do not C-ECHO the destination.")
@report_option
@click.option("-v", "--verbose", count=True)
@click.option("-q", "--quiet", is_flag=True)
def retry_command(job: str | None, redis_url: str | None, **o: Any) -> None:
    """Send a job's failed files again, to its destination or to a new one.

    On the embedded default (no --redis-url) this is a sending session like `run`'s: the
    state directory's Redis and local workers are started, the failed files sent, and the
    job's summary printed (exit codes as `run`). With --redis-url the files are enqueued for
    the cluster's running workers (or sent by --workers local ones).

    --host/--port/--called-ae change the job's destination first (a wrong port or AE title
    given to `run`): the destination is asked for a C-ECHO, then every file not stored goes
    there; the change is kept in the job's history and shown by `migrator report`.

    \b
    Examples:
      migrator retry                                   # the last job, embedded default
      migrator retry job-3f2a9c01de --port 104 --called-ae PACS
      migrator retry job-3f2a9c01de --redis-url redis://redis:6379/0 --in-flight
      migrator retry job-3f2a9c01de --missing          # after `migrator verify`

    --missing sends, instead of the failed files, what the last `verify` of a job planned
    from an old PACS (dimse://) found at the source and not at the destination, through the
    job's own batches (a stored file the destination lost is put back in flight and counted
    once); run `verify` again to see the destination complete.
    """
    from migrator.commands.retry import retry

    setup_logging(o["verbose"], o["quiet"])
    retry(job, redis_url, o)


@click.command("jobs")
@redis_option
@state_dir_option
def jobs_command(redis_url: str | None, state_dir: str) -> None:
    """List the jobs (of the state directory, or of --redis-url) with their counts.

    Each line: the job id, its destination, its counts and its state (finished, sending,
    interrupted, created; paused or cancelled first when it is). A state directory nothing
    was run with is a usage error (exit 2).

    \b
    Examples:
      migrator jobs                                # the default state directory
      migrator jobs --state-dir /srv/migration/state
      migrator jobs --redis-url redis://redis:6379/0
    """
    import redis

    from migrator import control
    from migrator.ledger import Ledger, list_jobs
    from migrator.units import local_time

    with open_jobs(redis_url, state_dir, "jobs") as jobs:
        try:
            for job in list_jobs(jobs.client):
                ledger = Ledger(jobs.client, job)
                config = ledger.config()
                counts = ledger.counts()
                meta = ledger.meta()
                dest = f"{config.get('host')}:{config.get('port')} ({config.get('called_ae')})"
                if ledger.finished():
                    state = f"finished {local_time(meta.get('finished'))}"
                elif "session" in meta:
                    state = "sending" if jobs.attached_to else "interrupted"
                else:
                    state = f"created {local_time(meta.get('created'))}"
                held = control.state(jobs.client, job)  # paused / cancelled
                if held:
                    state = f"{held}, {state}"
                priority = config.get("priority") or "normal"  # --priority among jobs
                if priority != "normal":
                    state = f"{priority} priority, {state}"
                line = status_line(counts, 0.0, 0.0).split(";")[0]
                click.echo(f"{job}  → {dest}  {line}  [{state}]")
        except redis.RedisError as exc:
            fail(exc)


@click.command("limit")
@click.argument("job", required=False)
@redis_option
@state_dir_option
@opt(
    "--rate-limit",
    env="RATE_LIMIT",
    type=click.FloatRange(min=0),
    default=None,
    help="Files per second (0: no limit).",
)
@opt(
    "--rate-limit-bytes",
    env="RATE_LIMIT_BYTES",
    type=click.FloatRange(min=0),
    default=None,
    help="MB per second (0: no limit).",
)
@opt("--burst", env="BURST", type=click.IntRange(1), default=None)
@opt(
    "--hold",
    env="LIMIT_HOLD",
    is_flag=True,
    help="With a --schedule: keep these limits past the next window, until --clear.",
)
@opt(
    "--clear",
    env="LIMIT_CLEAR",
    is_flag=True,
    help="With a --schedule: drop the override; the schedule's window applies again.",
)
def limit_command(
    job: str | None,
    redis_url: str | None,
    state_dir: str,
    rate_limit: float | None,
    rate_limit_bytes: float | None,
    burst: int | None,
    hold: bool,
    clear: bool,
) -> None:
    """Change a running job's rate limits; every worker applies them to its next file.

    The limits belong to the destination, so they also apply to other jobs sending to the
    same PACS. Options not given keep their current value. A job with a --schedule: the
    new limits override the current window until the next one starts (--hold: until
    --clear).

    \b
    Examples:
      migrator limit job-3f2a9c01de --rate-limit 50        # slow down during the day
      migrator limit job-3f2a9c01de --rate-limit 0         # no limit at night
      migrator limit job-3f2a9c01de --rate-limit 5 --hold  # scheduled job: until --clear
      migrator limit job-3f2a9c01de --clear                # back to the schedule
    """
    from migrator.keys import limiter_key
    from migrator.limits import schedule_redis
    from migrator.limits.rate import Limits
    from migrator.limits.rate_redis import get_limits, set_limits
    from migrator.settings import Settings

    with job_ledger(redis_url, state_dir, job, "limit") as (ledger, _):
        config = Settings.from_dict(ledger.config())
        key = limiter_key(config.destination)
        if clear:
            schedule_redis.clear_override(ledger.client, key)
            ledger.add_history("limit-cleared")
            now = schedule_redis.current(ledger.client, key)
            click.echo(
                f"{config.server}: " + (schedule_redis.describe(now) if now else "no schedule")
            )
            raise SystemExit(int(ExitStatus.OK))
        current = get_limits(ledger.client, key) or config.limits
        files = current.files_per_s if rate_limit is None else (rate_limit or None)
        nbytes = (
            current.bytes_per_s if rate_limit_bytes is None else (rate_limit_bytes * 1e6 or None)
        )
        try:
            limits = Limits(files, nbytes, burst_files=burst or current.burst_files)
        except ConfigError as exc:
            fail_config(str(exc))
        set_limits(ledger.client, key, limits)
        until = schedule_redis.override(ledger.client, key, hold=hold)
        # Kept with the job: its report draws the limit as it was at each moment.
        ledger.add_history("limit", files_per_s=files, bytes_per_s=nbytes, burst=limits.burst_files)
    click.echo(
        f"{config.server}: "
        f"{'no file limit' if files is None else f'{files:g} files/s'}, "
        f"{'no byte limit' if nbytes is None else f'{nbytes / 1e6:g} MB/s'}, "
        f"burst {limits.burst_files}"
        + ("" if until is None else f"; the schedule's next window at {local_time(until)} ends it")
    )
