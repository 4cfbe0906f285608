"""``migrator flower``: Celery's Flower dashboard on the migration's broker."""

from __future__ import annotations

import os
import sys

import click

from migrator.commands.common import fail_config, opt


@click.command("flower")
@opt(
    "--redis-url",
    "--broker",
    "redis_url",
    env="REDIS_URL",
    required=True,
    help="The Redis the workers use (redis://host:6379/0).",
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
    (not on the command line, where other users could read it in `ps`). Flower's /metrics and
    /healthcheck stay open without auth: do not expose the port publicly.
    Batches appear as `migrator.store_batch` tasks with ids `<job>:<batch>` on the queue
    `migrator.batches`. Start Flower before the job: it sees only events sent while it runs.

    \b
    Example:
      MIGRATOR_FLOWER_BASIC_AUTH=admin:s3cret migrator flower --redis-url redis://redis:6379/0
    """
    auth = os.environ.get("MIGRATOR_FLOWER_BASIC_AUTH", "")
    if ":" not in auth:
        fail_config("set MIGRATOR_FLOWER_BASIC_AUTH=user:password (Flower runs with basic auth)")
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
