"""``migrator pause / resume / cancel``: hold a job, let it go on, or end it for good
(migrator/control.py holds the state, in the job's Redis next to its ledger)."""

from __future__ import annotations

import time

import click
import redis

from migrator.commands.common import fail, fail_config, opt
from migrator.commands.jobstate import job_ledger, redis_option, state_dir_option
from migrator.errors import MigratorError
from migrator.exitcodes import ExitStatus


@click.command("pause")
@click.argument("job", required=False)
@redis_option
@state_dir_option
@opt(
    "--wait",
    env="PAUSE_WAIT",
    is_flag=True,
    help="Return once no worker sends a file of the job any more (the files that were on "
    "the wire are answered and recorded, the associations closed).",
)
def pause_command(job: str | None, redis_url: str | None, state_dir: str, wait: bool) -> None:
    """Pause a job: within a second no worker starts another of its files.

    Files already on the wire are answered and recorded; the rest stays planned. Workers
    give back the job's associations (a paused job holds none at the PACS) and put its
    queued batches aside until `migrator resume`. A `migrator run` waiting for the job
    keeps waiting.

    \b
    Examples:
      migrator pause job-3f2a9c01de --redis-url redis://redis:6379/0
      migrator pause --wait                   # the last job of the default state directory
    """
    from migrator import control

    with job_ledger(redis_url, state_dir, job, "pause") as (ledger, _):
        try:
            was = control.pause(ledger)
            if was == control.CANCELLED:
                fail_config(f"job {ledger.job_id} is cancelled; it cannot be paused")
            if wait:
                # A sender sees the pause within CHECK_EVERY, then its last answers come in.
                while control.senders(ledger):
                    time.sleep(0.1)
        except (MigratorError, redis.RedisError) as exc:
            fail(exc)
        counts = ledger.counts()
    already = " (it was paused already)" if was == control.PAUSED else ""
    click.echo(
        f"{ledger.job_id}: paused{already}; {counts['in_flight']} files not sent yet; "
        f"`migrator resume {ledger.job_id}` goes on"
    )
    raise SystemExit(int(ExitStatus.OK))


@click.command("resume")
@click.argument("job", required=False)
@redis_option
@state_dir_option
def resume_command(job: str | None, redis_url: str | None, state_dir: str) -> None:
    """Resume a paused job: its batches are sent again by the running workers.

    \b
    Examples:
      migrator resume job-3f2a9c01de --redis-url redis://redis:6379/0
      migrator resume                         # the last job of the default state directory
    """
    from migrator import control
    from workers.app import enqueuer

    with job_ledger(redis_url, state_dir, job, "resume") as (ledger, jobs):
        try:
            was, parked = control.resume(ledger)
            if was == control.CANCELLED:
                fail_config(f"job {ledger.job_id} is cancelled; it cannot be resumed")
            enqueue = enqueuer(jobs.url, ledger.job_id)
            for batch_id in parked:
                enqueue(batch_id)
        except (MigratorError, redis.RedisError) as exc:
            fail(exc)
    if was == "ok":
        click.echo(f"{ledger.job_id}: resumed; {len(parked)} parked batches enqueued again")
    else:
        click.echo(f"{ledger.job_id}: not paused; nothing to do")
    raise SystemExit(int(ExitStatus.OK))


@click.command("cancel")
@click.argument("job", required=False)
@redis_option
@state_dir_option
@opt(
    "--timeout",
    env="CANCEL_TIMEOUT",
    type=click.FloatRange(0),
    default=120.0,
    show_default=True,
    help="Seconds to wait for the workers to settle the batches they are sending.",
)
def cancel_command(job: str | None, redis_url: str | None, state_dir: str, timeout: float) -> None:
    """Cancel a job for good: every file not sent yet ends `skipped: cancelled`.

    Files already on the wire are answered and recorded as usual, so the job's accounts
    stay whole: planned = stored + failed + skipped. A cancelled job cannot be resumed; a
    new `migrator run` with another --job starts afresh.

    \b
    Examples:
      migrator cancel job-3f2a9c01de --redis-url redis://redis:6379/0
      migrator cancel                         # the last job of the default state directory
    """
    from migrator import control

    with job_ledger(redis_url, state_dir, job, "cancel") as (ledger, _):
        try:
            _, held = control.cancel(ledger, wait=timeout)
        except (MigratorError, redis.RedisError) as exc:
            fail(exc)
        counts = ledger.counts()
    click.echo(
        f"{ledger.job_id}: cancelled; {counts['skipped']} skipped, {counts['stored']} stored, "
        f"{counts['failed']} failed of {counts['planned']} planned"
    )
    if held:
        click.echo(
            f"migrator: {len(held)} batches were still being sent after {timeout:g} s; "
            "their workers settle them as cancelled",
            err=True,
        )
        raise SystemExit(int(ExitStatus.INCOMPLETE))
    raise SystemExit(int(ExitStatus.OK))


@click.command("urgent")
@click.argument("job", required=False)
@redis_option
@state_dir_option
@opt(
    "--list",
    "path",
    env="URGENT_LIST",
    required=True,
    type=click.Path(dir_okay=False),
    help="StudyInstanceUIDs or AccessionNumbers, one a line (# comments).",
)
def urgent_command(job: str | None, redis_url: str | None, state_dir: str, path: str) -> None:
    """Send the studies of a list next, in a job that is running: every worker takes their
    batches before any other at its next batch (those being sent finish first).

    \b
    Examples:
      migrator urgent job-3f2a9c01de --list tumour-board.txt --redis-url redis://redis:6379/0
      migrator urgent --list wanted-today.txt     # the last job of the default state dir
    """
    from migrator import control
    from migrator.ordering import read_priority_list

    try:
        named = read_priority_list(path)
    except MigratorError as exc:
        fail_config(str(exc))
    with job_ledger(redis_url, state_dir, job, "urgent") as (ledger, _):
        try:
            files, batches = control.mark_urgent(ledger, named)
        except (MigratorError, redis.RedisError) as exc:
            fail(exc)
    click.echo(f"{ledger.job_id}: {files} unsent files in {len(batches)} batches go next")
    raise SystemExit(int(ExitStatus.OK))
