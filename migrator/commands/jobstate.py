"""Where the commands that look at and steer jobs find them: a cluster's Redis
(``--redis-url``), or by default the state directory `migrator run` kept them in.

With the embedded default (no ``--redis-url``), `status`, `report`, `verify`, `jobs`,
`limit` and `flower` open ``--state-dir`` (default: `run`'s): they attach to the embedded
Redis of the command using it (a `run` sending: they see it live), else start it for
themselves and stop it when they end (``migrator.embedded.shared``). A JOB argument may be
a job id, a unique prefix of one, or nothing: the job started last.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from migrator.commands.common import REDIS_URL_SECRET_HINT, fail_config, opt
from migrator.errors import ConfigError, MigratorError
from migrator.exitcodes import ExitStatus

if TYPE_CHECKING:
    import redis

    from migrator.ledger import Ledger

F = TypeVar("F", bound=Callable[..., Any])

#: Where an embedded run keeps its Redis data, so the same command resumes the same job, and
#: where every other command finds the jobs.
DEFAULT_STATE_DIR = os.path.join(
    os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "pacs-migrator"
)


def redis_option(func: F) -> F:
    """--redis-url for the commands on existing jobs: a cluster's Redis; default embedded."""
    return opt(
        "--redis-url",
        "--broker",
        "redis_url",
        env="REDIS_URL",
        default=None,
        help="The Redis the job runs on, for a cluster (redis://host:6379/0). Default: the "
        "embedded Redis of --state-dir, where `migrator run` keeps its jobs."
        + REDIS_URL_SECRET_HINT,
    )(func)


def state_dir_option(func: F) -> F:
    return opt(
        "--state-dir",
        env="STATE_DIR",
        type=click.Path(file_okay=False),
        default=DEFAULT_STATE_DIR,
        show_default=True,
        help="Without --redis-url: the state directory of `migrator run` that holds the jobs.",
    )(func)


def safe_url(url: str) -> str:
    """The URL without a password (secrets never reach the terminal or logs)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        url = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    # redis-py also takes ?password=...
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)


@dataclass
class Jobs:
    """An open Redis holding jobs: its URL (Celery's spelling), a client, and how to name
    it in messages."""

    url: str
    client: redis.Redis
    where: str
    #: Embedded: a `run` (or another command) owns the server this command attached to
    attached_to: str | None = None
    alive: Callable[[], bool] | None = None


def cannot_reach(where: str, exc: BaseException) -> NoReturn:
    click.echo(f"migrator: error: cannot reach Redis at {where}: {exc}", err=True)
    raise SystemExit(int(ExitStatus.CANNOT_CONNECT)) from None


@contextlib.contextmanager
def open_jobs(
    redis_url: str | None, state_dir: str, command: str, *, attach: bool = True
) -> Iterator[Jobs]:
    """The Redis of ``--redis-url``, or the embedded one of ``state_dir`` (attached to, or
    started for this command and stopped at the end). Errors end the command: a state
    directory without jobs exit 2, a Redis that cannot be reached exit 3."""
    import redis as redis_

    from migrator.redis_client import connect

    if redis_url:
        where = safe_url(redis_url)
        client = connect(redis_url)
        try:
            client.ping()
        except redis_.RedisError as exc:
            cannot_reach(where, exc)
        yield Jobs(redis_url, client, where)
        return
    from migrator.embedded.shared import StateRedis

    state = StateRedis(state_dir, command, attach=attach)
    try:
        state.start()
    except ConfigError as exc:
        fail_config(str(exc))
    except MigratorError as exc:  # busy (and not attachable), or it did not start
        click.echo(f"migrator: error: {exc}", err=True)
        raise SystemExit(int(ExitStatus.CANNOT_CONNECT)) from None
    try:
        where = f"the embedded Redis of {state.data_dir}"
        client = connect(state.url, ride_out=False)
        attached = state.holder.describe() if state.holder is not None else None
        yield Jobs(state.url, client, where, attached, state.alive)
    finally:
        state.stop()


def find_job(jobs: Jobs, job: str | None, *, quiet: bool = False) -> Ledger:
    """The job named ``job`` (an id or a unique prefix of one), or the job started last.
    An unknown job is a usage error (exit 2); Redis going away, exit 3."""
    return find_job_in(jobs.client, jobs.where, job, quiet=quiet)


def find_job_in(client: redis.Redis, where: str, job: str | None, *, quiet: bool = False) -> Ledger:
    """:func:`find_job` on a client (``where``: how to name its Redis in messages)."""
    import redis as redis_

    from migrator.ledger import Ledger, list_jobs

    try:
        ids = list_jobs(client)
        if job is not None:
            if job in ids:
                return Ledger(client, job)
            matches = [j for j in ids if j.startswith(job)]
            if len(matches) == 1:
                return Ledger(client, matches[0])
            if len(matches) > 1:
                fail_config(f"{job!r} is the start of {len(matches)} jobs: {', '.join(matches)}")
            fail_config(f"no job {job!r} in {where}; `migrator jobs` lists them")
        if not ids:
            fail_config(f"no job in {where}")
        last = max(ids, key=lambda j: _started(Ledger(client, j)))
    except redis_.RedisError as exc:
        cannot_reach(where, exc)
    if not quiet:
        click.echo(f"{last} (the job started last in {where})", err=True)
    return Ledger(client, last)


def _started(ledger: Ledger) -> float:
    meta = ledger.meta()
    return max(meta.get("started", 0.0), meta.get("session", 0.0), meta.get("created", 0.0))


@contextlib.contextmanager
def job_ledger(
    redis_url: str | None, state_dir: str, job: str | None, command: str
) -> Iterator[tuple[Ledger, Jobs]]:
    """``open_jobs`` and ``find_job`` in one: the job's Ledger while the Redis is open."""
    with open_jobs(redis_url, state_dir, command) as jobs:
        yield find_job(jobs, job), jobs
