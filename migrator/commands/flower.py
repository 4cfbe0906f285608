"""``migrator flower``: Celery's Flower dashboard on the migration's broker."""

from __future__ import annotations

import os
import sys

import click

from migrator.commands.common import REDIS_URL_SECRET_HINT, fail_config, opt


def basic_auth_problem(auth: str) -> str | None:
    """What is wrong with a ``user:password[,user2:password2...]`` value (Flower's
    ``--basic-auth``), or None. Never quotes a password."""
    if not auth.strip():
        return "is not set"
    entries = auth.split(",")
    for n, entry in enumerate(entries, start=1):
        user, colon, password = entry.partition(":")
        where = f" (user {n} of {len(entries)})" if len(entries) > 1 else ""
        if not colon:
            return f"has no ':'{where}"
        if not user.strip():
            return f"has an empty user name{where}"
        if not password.strip():
            return f"has an empty password{where}"
    return None


@click.command("flower")
@opt(
    "--redis-url",
    "--broker",
    "redis_url",
    env="REDIS_URL",
    required=True,
    help="The Redis the workers use (redis://host:6379/0)." + REDIS_URL_SECRET_HINT,
)
@opt("--port", env="FLOWER_PORT", type=click.IntRange(1, 65535), default=5555, show_default=True)
@opt(
    "--address",
    env="FLOWER_ADDRESS",
    default="127.0.0.1",
    show_default=True,
    help="Listen address (0.0.0.0 in a container).",
)
def flower_command(redis_url: str, port: int, address: str) -> None:
    """Start Flower (live view of workers, batches and queues) on the job's broker.

    Basic auth is required: set MIGRATOR_FLOWER_BASIC_AUTH=user:password in the environment
    (not on the command line, where other users could read it in `ps`); neither the user nor
    the password may be empty (several users: user1:pw1,user2:pw2). Flower's /metrics and
    /healthcheck stay open without auth: do not expose the port publicly.
    Batches appear as `migrator.store_batch` tasks with ids `<job>:<batch>` on the queue
    `migrator.batches`. Start Flower before the job: it sees only events sent while it runs.

    \b
    Example:
      MIGRATOR_FLOWER_BASIC_AUTH=admin:s3cret migrator flower --redis-url redis://redis:6379/0
    """
    auth = os.environ.get("MIGRATOR_FLOWER_BASIC_AUTH", "")
    problem = basic_auth_problem(auth)
    if problem:
        fail_config(
            f"MIGRATOR_FLOWER_BASIC_AUTH {problem}: set it to user:password (several users: "
            "user1:pw1,user2:pw2); Flower runs with basic auth"
        )
    env = {**os.environ, "MIGRATOR_REDIS_URL": redis_url, "FLOWER_BASIC_AUTH": auth}
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "flower",
        f"--port={port}",
        f"--address={address}",
    ]
    os.execve(sys.executable, args, env)
