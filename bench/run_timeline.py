"""Where one `migrator run` spends its wall time: a timeline of its phases.

    .venv/bin/python bench/run_timeline.py run DIR --host H --port P --called-ae AE \\
        --state-dir /tmp/state --workers 2 -q --report /tmp/r.json

Runs the real command in this process with its main steps wrapped (embedded Redis start and
stop, local workers start / ready / stop, planning, waiting for outcomes, reading and writing
the report, the summary) and prints, on stderr, the seconds since launch at which each one
started and ended. Nothing else changes: the job runs as `migrator run` would. The gaps
between lines are the rest (imports before "imports done", the exit after the report).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

T0 = time.perf_counter()


def mark(what: str) -> None:
    print(f"{time.perf_counter() - T0:7.3f} s  {what}", file=sys.stderr)


def wrap(owner: Any, attr: str, label: str) -> None:
    inner: Callable[..., Any] = getattr(owner, attr)

    def timed(*args: Any, **kwargs: Any) -> Any:
        mark(f"{label} start")
        try:
            return inner(*args, **kwargs)
        finally:
            mark(f"{label} end")

    setattr(owner, attr, timed)


def main() -> None:
    import migrator.commands.run as run_cmd
    import migrator.commands.session as session
    import migrator.embedded as embedded
    import migrator.engine as engine
    import migrator.report as report
    import migrator.summary as summary
    import workers.local as local
    from migrator.cli import main as cli_main

    mark("imports done")
    wrap(embedded.EmbeddedRedis, "start", "embedded Redis start")
    wrap(embedded.EmbeddedRedis, "stop", "embedded Redis stop")
    wrap(local.LocalWorkers, "start", "local workers launch")
    wrap(local.LocalWorkers, "wait_ready", "local workers wait until ready")
    wrap(local.LocalWorkers, "stop", "local workers stop")
    wrap(run_cmd, "_plan", "plan")
    wrap(engine, "wait", "wait for every outcome")
    wrap(session, "_read_results", "read the summary (and report) from the ledger")
    wrap(session, "_read_report", "read the report from the ledger")
    wrap(summary, "render_text", "summary")
    wrap(report, "write_report", "write the report file")
    try:
        cli_main()
    finally:
        mark("exit")


if __name__ == "__main__":
    sys.argv[0] = "migrator"
    main()
