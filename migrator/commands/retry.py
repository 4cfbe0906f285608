"""``migrator retry``: send a job's failed files again, to its destination or a new one.

Embedded default (no ``--redis-url``), or ``--workers``: a sending session as `run`'s
(:mod:`migrator.commands.session`), which starts the state directory's Redis and local
workers, sends, waits and ends with the job's summary. On a cluster: the files are put
back in flight and their batches enqueued for the running workers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

import click
import redis

from migrator.commands.common import fail, fail_config
from migrator.errors import ConfigError
from migrator.exitcodes import ExitStatus
from migrator.settings import Settings

if TYPE_CHECKING:
    from migrator.ledger import Ledger


def retry(job: str | None, redis_url: str | None, o: dict[str, Any]) -> NoReturn:
    if redis_url and not o["workers"]:
        _enqueue_only(job, redis_url, o)
    _send(job, redis_url, o)


def new_destination(ledger: Ledger, o: dict[str, Any]) -> tuple[Settings, Settings]:
    """(the job's settings, the settings with --host/--port/--called-ae applied)."""
    old = Settings.from_dict(ledger.config())
    new = replace(
        old,
        host=o["new_host"] or old.host,
        port=o["new_port"] or old.port,
        called_ae=o["new_called_ae"] or old.called_ae,
    )
    return old, new


def move(ledger: Ledger, old: Settings, new: Settings) -> None:
    """Make ``new`` the job's destination: its settings (every batch reads them when it
    starts), its rate limits carried over (as `limit` left them), the change kept in its
    history."""
    from migrator.keys import limiter_key
    from migrator.limits.rate_redis import get_limits, set_limits

    if new.destination == old.destination:
        return
    limits = get_limits(ledger.client, limiter_key(old.destination)) or old.limits
    config = ledger.config()
    config.update(host=new.host, port=new.port, called_ae=new.called_ae)
    ledger.set_config(config)
    set_limits(ledger.client, limiter_key(new.destination), limits)
    ledger.add_history("destination", **{"from": old.server, "to": new.server})


def _check(new: Settings, o: dict[str, Any], changed: bool) -> None:
    """C-ECHO to the destination: always before a session, on a cluster only when the
    destination changes."""
    from migrator.commands.echo import preflight
    from migrator.commands.session import PreflightFailed

    if o["no_preflight"]:
        return
    failed = preflight(new)
    if failed is not None:
        message, status = failed
        what = "the job's destination was not changed" if changed else "nothing was sent"
        raise PreflightFailed(f"{message}\nmigrator: {what} (--no-preflight: send anyway)", status)


def _again(ledger: Ledger, enqueue: Callable[[str], None], o: dict[str, Any], verb: str) -> str:
    """Put back in flight what is to be sent again (the failed files, or with --missing
    what the last reconciliation found missing); says what ("3 failed files {verb}")."""
    from migrator import engine

    if o.get("missing"):
        from migrator.verify.reconcile import load_reconciliation
        from migrator.verify.refetch import refetch_missing

        if load_reconciliation(ledger) is None:
            raise ConfigError(
                f"{ledger.job_id}: --missing sends what `migrator verify` found missing at "
                "the destination; this job has not been reconciled with its source yet "
                f"(run `migrator verify {ledger.job_id}` first)"
            )
        return refetch_missing(ledger, enqueue).describe(verb)
    return f"{engine.retry_failed(ledger, enqueue)} failed files {verb}"


def _enqueue_only(job: str | None, redis_url: str, o: dict[str, Any]) -> NoReturn:
    from migrator.commands.jobstate import job_ledger
    from migrator.commands.session import PreflightFailed
    from migrator.errors import MigratorError
    from workers.app import enqueuer

    with job_ledger(redis_url, o["state_dir"], job, "retry") as (ledger, _):
        job_id = ledger.job_id
        try:
            old, new = new_destination(ledger, o)
            if new.destination != old.destination:
                _check(new, o, changed=True)
                move(ledger, old, new)
                click.echo(f"{job_id}: destination changed from {old.server} to {new.server}")
            enqueue = enqueuer(redis_url, job_id)
            click.echo(f"{job_id}: {_again(ledger, enqueue, o, 'enqueued again')}")
            if o["in_flight"]:
                from workers.recovery import recover

                # Only batches no live worker holds (a batch being sent holds a lease).
                got = recover(redis_url, ledger, enqueue, workers_gone=False)
                click.echo(f"{job_id}: {got.batches} batches with files in flight enqueued again")
        except PreflightFailed as exc:
            click.echo(str(exc), err=True)
            raise SystemExit(int(exc.exit_status)) from None
        except (MigratorError, redis.RedisError) as exc:
            fail(exc)
    raise SystemExit(int(ExitStatus.OK))


def _send(job: str | None, redis_url: str | None, o: dict[str, Any]) -> NoReturn:
    from migrator.commands.jobstate import find_job_in, safe_url
    from migrator.commands.session import Session, send_session

    if o["in_flight"] and redis_url:
        fail_config("--in-flight is for the cluster's workers: without --workers")
    where = safe_url(redis_url) if redis_url else f"the embedded Redis of {o['state_dir']}"
    if redis_url is None:
        from migrator.embedded.shared import require_jobs
        from migrator.errors import ConfigError

        try:  # before the session starts a Redis there (and creates the directory)
            require_jobs(o["state_dir"])
        except ConfigError as exc:
            fail_config(str(exc))

    def open_job(client: redis.Redis, url: str) -> Ledger:
        ledger = find_job_in(client, where, job)
        old, new = new_destination(ledger, o)
        _check(new, o, changed=new.destination != old.destination)
        move(ledger, old, new)
        s.job_id, s.config = ledger.job_id, new
        moved = f" (was {old.server})" if new.destination != old.destination else ""
        what = "missing instances" if o.get("missing") else "failed files"
        s.describe = f"job {ledger.job_id}: {what} → {new.server}{moved}"
        s.note = {"destination": new.server}
        s.again = f"`migrator retry {ledger.job_id}`"
        return ledger

    def prepare(ledger: Ledger, url: str) -> str | None:
        from workers.app import enqueuer

        return (
            f"job {ledger.job_id}: {_again(ledger, enqueuer(url, ledger.job_id), o, 'sent again')}"
        )

    s = Session(
        command="retry",
        job_id=job or "",
        config=Settings(host="-"),  # the job's, once it is open
        redis_url=redis_url,
        workers=o["workers"],
        state_dir=o["state_dir"],
        timeout=None,
        quiet=o["quiet"],
        verbose=o["verbose"],
        reports=tuple(o["report"]),
        open_job=open_job,
        prepare=prepare,
        again="`migrator retry` again",
    )
    send_session(s)
