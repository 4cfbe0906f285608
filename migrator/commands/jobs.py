"""``migrator status / retry / jobs / limit``: look at and steer jobs in a shared Redis."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from migrator.commands.common import REDIS_URL_SECRET_HINT, fail_config, opt
from migrator.errors import ConfigError
from migrator.exitcodes import ExitStatus
from migrator.units import human_bytes

F = TypeVar("F", bound=Callable[..., Any])


def redis_option(func: F) -> F:
    return opt(
        "--redis-url",
        "--broker",
        "redis_url",
        env="REDIS_URL",
        required=True,
        help="The Redis the job runs on (redis://host:6379/0)." + REDIS_URL_SECRET_HINT,
    )(func)


def _ledger(redis_url: str, job: str) -> Any:
    from migrator.ledger import Ledger
    from migrator.redis_client import connect

    ledger = Ledger(connect(redis_url), job)
    try:
        if not ledger.exists():
            fail_config(f"no job {job!r} in {_safe_url(redis_url)}; `migrator jobs` lists them")
    except Exception as exc:  # redis errors: connection refused, auth...
        click.echo(
            f"migrator: error: cannot reach Redis at {_safe_url(redis_url)}: {exc}", err=True
        )
        raise SystemExit(int(ExitStatus.CANNOT_CONNECT)) from None
    return ledger


def _safe_url(url: str) -> str:
    """The URL without a password (secrets never reach the terminal or logs)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        url = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    # redis-py also takes ?password=...
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)


def status_line(counts: dict[str, int], files_s: float, bytes_s: float) -> str:
    done = counts["stored"] + counts["failed"] + counts["skipped"]
    eta = counts["in_flight"] / files_s if files_s > 0 else None
    return (
        f"{done}/{counts['planned']} files: {counts['stored']} stored, {counts['failed']} failed, "
        f"{counts['skipped']} skipped, {counts['in_flight']} in flight; "
        f"{files_s:.1f} files/s, {human_bytes(bytes_s)}/s; "
        + (f"ETA {eta:.0f} s" if eta is not None else "ETA -")
    )


@click.command("status")
@click.argument("job")
@redis_option
@opt("--watch", env="WATCH", is_flag=True, help="Print a line every --interval until done.")
@opt("--interval", env="INTERVAL", type=click.FloatRange(0.2), default=2.0, show_default=True)
@opt("--json", "as_json", env="STATUS_JSON", is_flag=True, help="Machine-readable output.")
def status_command(job: str, redis_url: str, watch: bool, interval: float, as_json: bool) -> None:
    """Counts, rate and ETA of a job.

    \b
    Examples:
      migrator status job-3f2a9c01de --redis-url redis://redis:6379/0
      migrator status job-3f2a9c01de --watch
    """
    from migrator.engine import recent_rate
    from migrator.progress import JobProgress

    ledger = _ledger(redis_url, job)
    bar = JobProgress(enabled=watch and not as_json)
    while True:
        counts = ledger.counts()
        if as_json:
            files_s, _ = recent_rate(ledger)
            click.echo(json.dumps({"job": job, **counts, "files_per_s": files_s}))
        elif watch:
            bar.update(counts)
        else:
            files_s, bytes_s = recent_rate(ledger)
            click.echo(f"{job}: {status_line(counts, files_s, bytes_s)}")
        if not watch or counts["in_flight"] <= 0:
            break
        time.sleep(interval)
    bar.close()
    raise SystemExit(int(ExitStatus.PARTIAL_FAILURE if counts["failed"] else ExitStatus.OK))


@click.command("retry")
@click.argument("job")
@redis_option
@opt(
    "--in-flight",
    env="RETRY_IN_FLIGHT",
    is_flag=True,
    help="Also enqueue again the batches whose files have no outcome yet (their tasks were "
    "lost, e.g. Redis ran without persistence). Stored files are never sent twice.",
)
def retry_command(job: str, redis_url: str, in_flight: bool) -> None:
    """Send a job's failed files again (running workers pick them up).

    \b
    Examples:
      migrator retry job-3f2a9c01de --redis-url redis://redis:6379/0
      migrator retry job-3f2a9c01de --in-flight
    """
    from migrator import engine
    from workers.app import enqueuer

    ledger = _ledger(redis_url, job)
    enqueue = enqueuer(redis_url, job)
    n = engine.retry_failed(ledger, enqueue)
    click.echo(f"{job}: {n} failed files enqueued again")
    if in_flight:
        from workers.recovery import recover

        # Only batches no live worker holds (a batch being sent holds a lease).
        got = recover(redis_url, ledger, enqueue, workers_gone=False)
        b = got.batches
        click.echo(f"{job}: {b} batches with files in flight enqueued again")


@click.command("jobs")
@redis_option
def jobs_command(redis_url: str) -> None:
    """List the jobs in a Redis with their counts."""
    from migrator.ledger import Ledger, list_jobs
    from migrator.redis_client import connect

    client = connect(redis_url)
    try:
        jobs = list_jobs(client)
    except Exception as exc:  # redis errors: connection refused, auth...
        click.echo(
            f"migrator: error: cannot reach Redis at {_safe_url(redis_url)}: {exc}", err=True
        )
        raise SystemExit(int(ExitStatus.CANNOT_CONNECT)) from None
    for job in jobs:
        ledger = Ledger(client, job)
        config = ledger.config()
        counts = ledger.counts()
        dest = f"{config.get('host')}:{config.get('port')} ({config.get('called_ae')})"
        click.echo(f"{job}  → {dest}  {status_line(counts, 0.0, 0.0).split(';')[0]}")


@click.command("limit")
@click.argument("job")
@redis_option
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
def limit_command(
    job: str,
    redis_url: str,
    rate_limit: float | None,
    rate_limit_bytes: float | None,
    burst: int | None,
) -> None:
    """Change a running job's rate limits; every worker applies them to its next file.

    The limits belong to the destination, so they also apply to other jobs sending to the
    same PACS. Options not given keep their current value.

    \b
    Examples:
      migrator limit job-3f2a9c01de --rate-limit 50        # slow down during the day
      migrator limit job-3f2a9c01de --rate-limit 0         # no limit at night
    """
    from migrator.keys import limiter_key
    from migrator.limits.rate import Limits
    from migrator.limits.rate_redis import get_limits, set_limits
    from migrator.settings import Settings

    ledger = _ledger(redis_url, job)
    config = Settings.from_dict(ledger.config())
    key = limiter_key(config.destination)
    current = get_limits(ledger.client, key) or config.limits
    files = current.files_per_s if rate_limit is None else (rate_limit or None)
    nbytes = current.bytes_per_s if rate_limit_bytes is None else (rate_limit_bytes * 1e6 or None)
    try:
        limits = Limits(files, nbytes, burst_files=burst or current.burst_files)
    except ConfigError as exc:
        fail_config(str(exc))
        return
    set_limits(ledger.client, key, limits)
    click.echo(
        f"{config.server}: "
        f"{'no file limit' if files is None else f'{files:g} files/s'}, "
        f"{'no byte limit' if nbytes is None else f'{nbytes / 1e6:g} MB/s'}, "
        f"burst {limits.burst_files}"
    )
