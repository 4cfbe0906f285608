"""What the smaller benches (latency_bench.py, orthanc_bench.py, stow_bench.py) share: one
row of timed runs, the goals table, emptying an Orthanc between runs, and the exit status of
a bench that could not run."""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.measure import SetupError, Spawner, log, sender_env, tail

#: (what, measured, met)
Goal = tuple[str, float, bool]


@dataclass
class Row:
    """One sender in one condition (an RTT, a receiver): its timed runs and failures."""

    sender: str
    where: str
    files: int
    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        """files/s of the median run (None: no run succeeded)."""
        return self.files / statistics.median(self.seconds) if self.seconds else None


class _Orthanc(Protocol):
    def get(self, path: str, **params: Any) -> Any: ...
    def delete(self, path: str) -> None: ...
    def count_instances(self) -> int: ...


def empty_orthanc(orthanc: _Orthanc) -> None:
    """Delete every instance (by patient), so that the next run stores into an empty
    Orthanc: a re-sent instance is not stored again and would make later runs cheaper."""
    for patient in orthanc.get("/patients"):
        orthanc.delete(f"/patients/{patient}")


def timed_into_orthanc(
    spawner: Spawner,
    argv: Sequence[str],
    orthanc: _Orthanc,
    row: Row,
    label: str,
    timeout: float,
) -> bool:
    """One timed run of ``argv`` into an emptied ``orthanc``; it counts (into ``row``) only
    with exit 0 and Orthanc holding every file afterwards. False: it failed (logged)."""
    empty_orthanc(orthanc)
    res = spawner.run(argv, sender_env(), timeout)
    stored = orthanc.count_instances()
    if res.rc == 0 and stored == row.files:
        row.seconds.append(res.seconds)
        log(f"{label}: {row.files / res.seconds:,.0f} files/s")
        return True
    row.failures.append(f"rc {res.rc}, Orthanc holds {stored}")
    log(f"{label}: FAILED rc {res.rc}, Orthanc holds {stored}")
    log(tail(res.output))
    return False


def add_common_options(p: argparse.ArgumentParser) -> None:
    """The corpus, the timeout, DCMTK's folder and the JSON output."""
    p.add_argument("--corpus-dir", type=Path, help="make (or reuse) the corpus here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600, help="per run, seconds")
    p.add_argument("--dcmtk-dir", type=Path)
    p.add_argument("--json", type=Path, metavar="FILE")


def print_goals(goals: Sequence[Goal], issue: int) -> None:
    if goals:
        print(f"\n| goal (issue {issue}) | measured | |\n|---|---:|---|")
        for what, value, ok in goals:
            print(f"| {what} | {value:.2f} | {'met' if ok else 'NOT met'} |")


def run_main(main: Callable[[], int]) -> None:
    """Exit with ``main()``'s status, or 2 when the bench could not run."""
    try:
        sys.exit(main())
    except SetupError as exc:
        print(f"bench could not run: {exc}", file=sys.stderr)
        sys.exit(2)
