"""A Celery worker started without Celery's command line, for `migrator run`'s local workers.

``python -m celery -A workers.app worker …`` first imports Celery's whole command line (every
subcommand, click plugins, the REPL…): ~0.3 s of a local worker's ~1.1 s start-up, on the
critical path of every `migrator run`. This starts the same ``WorkController`` with the same
options as ``migrator.embedded.worker_argv`` (prefork pool, our queue, task events, no mingle,
no gossip), the way ``celery.bin.worker`` builds it. ``migrator worker``, compose and k8s keep
the documented ``celery`` command line.

    python -m workers.launch CONCURRENCY HOSTNAME LOGLEVEL

``HOSTNAME`` may use ``%h`` (this machine's name), as ``celery worker --hostname`` does.
``REMAP_SIGTERM`` and every ``MIGRATOR_*`` setting work as for the celery command.
"""

from __future__ import annotations

import sys


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
    from workers.app import QUEUE, app

    worker = app.Worker(
        hostname=host_format(default_nodename(hostname)),
        pool_cls=get_implementation("prefork"),
        loglevel=level,
        concurrency=concurrency,
        queues=[QUEUE],
        task_events=True,
        without_mingle=True,
        without_gossip=True,
    )
    worker.start()
    return int(worker.exitcode or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
