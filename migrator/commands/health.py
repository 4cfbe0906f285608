"""``migrator check-health``: is this host's worker alive? (liveness probes, healthchecks)."""

from __future__ import annotations

import time

import click

from migrator.commands.common import REDIS_URL_SECRET_HINT, fail_config, opt
from migrator.exitcodes import ExitStatus

HELP_EPILOG = (
    "Exit codes: 0 the worker's heartbeat is fresh; 1 no heartbeat within its TTL (the "
    "worker is dead, hung or not started yet); 2 bad arguments; 3 Redis cannot be reached."
)


@click.command("check-health", epilog=HELP_EPILOG)
@opt(
    "--redis-url",
    "--broker",
    "redis_url",
    env="REDIS_URL",
    required=True,
    help="The workers' Redis (redis://host:6379/0)." + REDIS_URL_SECRET_HINT,
)
@opt(
    "--worker",
    "node",
    env="HEALTH_WORKER",
    default=None,
    help="Celery node name of the worker to check. Default: celery@<this host name>, the "
    "worker that `migrator worker` runs in this container or pod.",
)
@opt("-q", "--quiet", "quiet", env="HEALTH_QUIET", is_flag=True, help="Print nothing.")
def check_health_command(redis_url: str, node: str | None, quiet: bool) -> None:
    """Check a worker's liveness: exit 0 while its heartbeat key in Redis is fresh.

    The worker renews the key every third of MIGRATOR_HEARTBEAT_TTL (default 30 s) from its
    event loop; a worker that died or hangs stops renewing it and this check fails at most
    one TTL later. Meant for liveness probes and compose healthchecks, run in the worker's
    own container.

    \b
    Examples:
      migrator check-health --redis-url redis://redis:6379/0
      migrator check-health --worker celery@worker-7f9c --redis-url redis://redis:6379/0
    """
    from redis import RedisError

    from migrator.commands.jobs import _safe_url
    from workers import heartbeat

    name = node or heartbeat.default_node()
    try:
        conn = heartbeat.client(redis_url)
    except ValueError as exc:  # not a redis:// / rediss:// / unix:// URL
        fail_config(f"bad --redis-url {_safe_url(redis_url)}: {exc}")
        return
    try:
        beat = heartbeat.read(conn, name)
    except RedisError as exc:
        click.echo(
            f"migrator: error: cannot read the heartbeat of {name} from Redis at "
            f"{_safe_url(redis_url)}: {exc}",
            err=True,
        )
        raise SystemExit(int(ExitStatus.CANNOT_CONNECT)) from None
    if beat is None:
        if not quiet:
            click.echo(f"{name}: no heartbeat within its TTL (dead, hung or not started)", err=True)
        raise SystemExit(int(ExitStatus.PARTIAL_FAILURE))
    if not quiet:
        age = time.time() - float(beat.get("time", time.time()))
        click.echo(
            f"{name}: alive (pid {beat.get('pid', '?')}, last beat {max(age, 0.0):.1f} s ago)"
        )
