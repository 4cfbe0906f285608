"""``migrator flower``: Celery's Flower dashboard on the migration's broker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import click

from migrator.commands.common import fail_config, opt
from migrator.commands.jobstate import redis_option, state_dir_option

#: Seconds Flower gets to stop after SIGTERM or Ctrl-C before it is killed.
STOP_GRACE = 5.0


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
@redis_option
@state_dir_option
@opt("--port", env="FLOWER_PORT", type=click.IntRange(1, 65535), default=5555, show_default=True)
@opt(
    "--address",
    env="FLOWER_ADDRESS",
    default="127.0.0.1",
    show_default=True,
    help="Listen address (0.0.0.0 in a container).",
)
def flower_command(redis_url: str | None, state_dir: str, port: int, address: str) -> None:
    """Start Flower (live view of workers, batches and queues) on the job's broker.

    Without --redis-url it attaches to the embedded Redis of the `migrator run` that is
    using --state-dir (start the run first; Flower ends with nothing to show once it
    stops). Basic auth is required: set MIGRATOR_FLOWER_BASIC_AUTH=user:password in the
    environment (not on the command line, where other users could read it in `ps`); neither
    the user nor the password may be empty (several users: user1:pw1,user2:pw2). Flower's
    /metrics and /healthcheck stay open without auth: do not expose the port publicly.
    Batches appear as `migrator.store_batch` tasks with ids `<job>:<batch>` on the queue
    `migrator.batches`. A batch with failed files is in the FAILURE state (Flower's state
    filter), its exception saying how many (`migrator report JOB --format csv` lists them);
    the batches `run` sends itself while its workers boot are shown as the worker
    `migrator-run@<host>`, ids `inline:<job>:<batch>`. Flower sees only events sent while
    it runs.

    \b
    Examples:
      MIGRATOR_FLOWER_BASIC_AUTH=admin:s3cret migrator flower      # the running `run`
      MIGRATOR_FLOWER_BASIC_AUTH=admin:s3cret migrator flower --redis-url redis://redis:6379/0

    Flower runs as a child of this command: SIGTERM or Ctrl-C stops it, and a Flower
    that has not stopped 5 s later (its calls to a Redis that answers nothing never
    return) is killed.

    Exit codes: 2 bad arguments, no auth, no running `run` to attach to, or the port is
    taken; otherwise Flower's own (0 when stopped by SIGTERM or Ctrl-C).
    """
    auth = os.environ.get("MIGRATOR_FLOWER_BASIC_AUTH", "")
    problem = basic_auth_problem(auth)
    if problem:
        fail_config(
            f"MIGRATOR_FLOWER_BASIC_AUTH {problem}: set it to user:password (several users: "
            "user1:pw1,user2:pw2); Flower runs with basic auth"
        )
    if not redis_url:
        redis_url = _attach(state_dir)
    _check_port(address, port)
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
    sys.exit(_supervise(args, env))


def _supervise(args: list[str], env: dict[str, str]) -> int:
    """Run Flower as a child and return its exit status. SIGTERM and SIGINT are passed on
    to it, and a Flower still there ``STOP_GRACE`` seconds later is killed: its exit waits
    for its calls to the broker, which never return while a Redis answers nothing (a host
    cut off) and retry for minutes when it is gone (the `run` it watched ended)."""
    child = subprocess.Popen(args, env=env)
    asked: list[float] = []

    def stop(signum: int, _frame: object) -> None:
        asked.append(time.monotonic())
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        try:
            code = child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if asked and time.monotonic() - asked[0] > STOP_GRACE:
                click.echo(
                    f"Flower did not stop within {STOP_GRACE:.0f} s (its calls to the broker "
                    "had not returned): stopped with SIGKILL",
                    err=True,
                )
                child.kill()
                child.wait()
                return 0  # a stop was asked for, and Flower's own answer to it is 0
            continue
        return code if code >= 0 else 128 - code


def _attach(state_dir: str) -> str:
    """The broker of the `run` using ``state_dir`` (its embedded Redis)."""
    from pathlib import Path

    from migrator.embedded.shared import live_holder

    holder = live_holder(Path(state_dir).expanduser().resolve())
    if holder is None:
        fail_config(
            f"no migrator run is using {state_dir}: start `migrator run` first (Flower "
            "attaches to its embedded Redis), or give --redis-url for a cluster"
        )
    click.echo(f"attached to the embedded Redis of {holder.describe()}", err=True)
    return holder.url


def _check_port(address: str, port: int) -> None:
    """A taken port is one line and exit 2, not Tornado's traceback after Flower started."""
    import socket

    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        fail_config(f"cannot listen on {address}:{port}: {exc.strerror or exc}")
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            fail_config(
                f"cannot listen on {address}:{port}: {exc.strerror or exc} (another Flower? "
                "pick another --port)"
            )
