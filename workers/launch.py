"""How our Celery worker starts: one set of options, two ways to start it.

``WORKER_OPTIONS`` are the worker's settings, once, as ``app.Worker`` keyword arguments; Celery's
command line spells each as its ``--option`` (``celery worker --queues … --without-mingle``),
and builds the same ``WorkController`` from them. The two ways:

- :func:`worker_argv`: ``python -m celery -A workers.app worker …``, the documented command line
  (``migrator worker`` execs it, so Celery is PID 1 in the compose and k8s deployments).
- ``python -m workers.launch CONCURRENCY HOSTNAME LOGLEVEL`` (:func:`main`): the same worker
  without Celery's command line, which first imports every subcommand, click plugins, the REPL…:
  ~0.3 s of a local worker's ~1.1 s start-up, on the critical path of every `migrator run`
  (``workers.local.LocalWorkers``). ``HOSTNAME`` may use ``%h`` (this machine's name), as
  ``celery worker --hostname`` does; ``REMAP_SIGTERM`` and every ``MIGRATOR_*`` setting work as
  for the celery command.

Mingle and gossip are off: both make every worker talk to every other at start and all the
time, which buys us nothing (no revokes, no worker-to-worker coordination) and slows startup.
Task events are on, for Flower.

Nothing is imported at module level but ``sys``: ``migrator worker`` builds the argv before it
execs Celery, and should not pay for importing it (or ``workers.app``) first.
"""

from __future__ import annotations

import sys
from typing import Final

#: The queue our workers consume: ``workers.app.QUEUE`` (not imported: that builds the app).
QUEUE: Final = "migrator.batches"
#: ...with those of the other job priorities, high first (``workers.app.QUEUES``): the
#: order a free worker process looks in (``queue_order_strategy=priority``).
QUEUES: Final = [QUEUE + ".high", QUEUE, QUEUE + ".low"]

#: ``app.Worker`` keyword arguments; ``pool`` by name (turned into its class as Celery's command
#: line does). The concurrency, node name and log level are given per start.
WORKER_OPTIONS: Final[dict[str, str | bool | list[str]]] = {
    "queues": QUEUES,
    "pool": "prefork",
    "task_events": True,
    "without_mingle": True,
    "without_gossip": True,
}


def _cli(name: str, value: str | bool | list[str]) -> list[str]:
    """One option as ``celery worker`` spells it (``without_mingle`` is ``--without-mingle``)."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else []
    if isinstance(value, list):
        return [flag, ",".join(value)]
    return [flag, value]


def worker_argv(
    concurrency: int, *, loglevel: str = "INFO", hostname: str | None = None
) -> list[str]:
    """argv of a Celery worker for our queue (``argv[0]`` is ``sys.executable``): the
    ``celery worker`` command line with :data:`WORKER_OPTIONS` (``migrator worker`` execs it)."""
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker"]
    for name, value in WORKER_OPTIONS.items():
        argv += _cli(name, value)
    argv += ["--concurrency", str(concurrency)]
    if hostname:
        argv += ["--hostname", hostname]
    return [*argv, "--loglevel", loglevel]


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[0].isdigit():
        print("usage: python -m workers.launch CONCURRENCY HOSTNAME LOGLEVEL", file=sys.stderr)
        return 2
    concurrency, hostname, loglevel = int(argv[0]), argv[1], argv[2]
    from celery.concurrency import get_implementation
    from celery.utils.log import mlevel
    from celery.utils.nodenames import default_nodename, host_format

    try:
        level = mlevel(loglevel)
    except KeyError:
        print(f"workers.launch: invalid log level {loglevel!r}", file=sys.stderr)
        return 2  # what celery's command line answers
    from workers.app import app

    options = dict(WORKER_OPTIONS)
    worker = app.Worker(
        hostname=host_format(default_nodename(hostname)),
        pool_cls=get_implementation(options.pop("pool")),
        loglevel=level,
        concurrency=concurrency,
        **options,
    )
    worker.start()
    return int(worker.exitcode or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
