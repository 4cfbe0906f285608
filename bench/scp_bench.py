#!/usr/bin/env python3
"""Receiving throughput: ``migrator scp`` against DCMTK ``storescp`` (issue 17), same senders.

Each sender (DCMTK ``storescu``, one association; ``migrator store -j4``, four) sends the
same corpus to each receiver, both writing every file to disk with the same options: a
flat output directory (``storescp -od``, ``migrator scp --no-organize``), the same maximum
PDU, one process per association for storescp (``--fork``: otherwise ``-j4`` queues behind
its one accept loop) and a process per core for ours (``--processes``, ``--scp-processes``
here), ``TCP_NODELAY=1``. Runs are interleaved (sender x receiver per
repetition) so that a shared machine's noise lands on both; a run counts only when the
sender exits 0 and the receiver's output directory holds exactly the corpus's file count.
files/s is the corpus over the sender's wall time (process start included, the same for
both receivers); the ratio to quote is ``migrator scp ÷ storescp`` per sender and corpus.

    .venv/bin/python bench/scp_bench.py --help
    .venv/bin/python bench/scp_bench.py --tiny 2000 --small 300 --repeat 3
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpora import prepare_corpus, warm_page_cache
from bench.measure import SetupError, Spawner, log, sender_env, stop_group, tail
from bench.receiver import find_dcmtk_tool
from bench.rows import Goal, Row, add_common_options, print_goals, run_main

HOST = "127.0.0.1"
AET = "BENCHSCP"
PDU = 16384  # storescp's and migrator scp's default
REPO = Path(__file__).resolve().parent.parent
READY = re.compile(r"listening on \S+:(\d+) as AE")


def repo_env() -> dict[str, str]:
    """``sender_env()`` with this checkout first on the path: the code measured is this
    tree's, whatever the venv's editable install points to."""
    env = sender_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


_ASIDE = itertools.count(1)


class Receiver:
    """One receiver process writing into ``out`` (emptied before each run)."""

    def __init__(self, name: str, out: Path, log_path: Path) -> None:
        self.name = name
        self.out = out
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen[Any] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=repo_env(),
                start_new_session=True,
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        time.sleep(0.3)  # storescp: still running after this long means it holds the port
        if self.proc is None or self.proc.poll() is not None:
            raise SetupError(f"{self.name} did not start:\n{tail(self.log_text())}")

    def log_text(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    def empty(self) -> None:
        """The last run's files moved aside, not deleted: deleting thousands of files
        seconds before the next run made every file that run created scan ext4's recently
        deleted inodes (perf: a third of the receiver's time in ``recently_deleted``, and
        both receivers' rates swinging 3x from run to run). A receiver does not meet that
        in a migration; the moved files are deleted once the bench is over."""
        aside = self.out.with_name(f"{self.out.name}-aside-{next(_ASIDE)}")
        aside.mkdir()
        for entry in os.scandir(self.out):
            if entry.is_file():
                os.rename(entry.path, aside / entry.name)
        # The last run's dirty pages written out now, not by the kernel during the next
        # run (150 MB of small files: that run's rate halved, whichever receiver it was).
        os.sync()

    def count(self) -> int:
        return sum(1 for e in os.scandir(self.out) if e.is_file() and not e.name.startswith("."))

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None


class StoreScp(Receiver):
    def __init__(self, storescp: str, out: Path, log_path: Path) -> None:
        super().__init__("DCMTK storescp", out, log_path)
        self.storescp = storescp

    def argv(self) -> list[str]:
        from migrator.netutil import free_port

        self.port = free_port(HOST)
        return [
            *(self.storescp, "--fork", "-od", str(self.out), "-pdu", str(PDU), "-aet", AET),
            str(self.port),
        ]


class MigratorScp(Receiver):
    def __init__(self, out: Path, log_path: Path, processes: int) -> None:
        super().__init__("migrator scp", out, log_path)
        self.processes = processes

    def argv(self) -> list[str]:
        return [
            *(sys.executable, "-m", "migrator.commands.scp", "0", "--bind", HOST),
            *("--aet", AET, "-o", str(self.out), "--no-organize", "--max-pdu", str(PDU)),
            *("--processes", str(self.processes)),
        ]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            match = READY.search(self.log_text())
            if match:
                self.port = int(match[1])
                return
            if self.proc is None or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise SetupError(f"migrator scp did not start:\n{tail(self.log_text())}")


def senders(storescu: str) -> dict[str, list[str]]:
    """name -> argv with ``{port}`` and ``{dir}`` to fill in."""
    return {
        "DCMTK storescu": [
            storescu,
            "-aec",
            AET,
            "+sd",
            "+r",
            "-pdu",
            str(PDU),
            HOST,
            "{port}",
            "{dir}",
        ],
        "migrator store -j4": [
            sys.executable,
            "-m",
            "migrator",
            "store",
            "--host",
            HOST,
            "--port",
            "{port}",
            "--called-ae",
            AET,
            "--dir",
            "{dir}",
            "-R",
            "-j",
            "4",
            "--max-pdu",
            str(PDU),
        ],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--tiny", type=int, default=2000, help="files in the tiny corpus (~9 KB)")
    p.add_argument("--small", type=int, default=300, help="files in the small corpus (~0.5 MB)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (median)")
    p.add_argument(
        "--work-dir",
        type=Path,
        help="where the corpora and the received files go (default: the system's temporary "
        "directory); /dev/shm takes the disk out of the comparison",
    )
    p.add_argument(
        "--scp-processes",
        type=int,
        default=min(64, os.cpu_count() or 1),
        help="migrator scp --processes (default: the number of CPUs, as storescp --fork "
        "may use them all)",
    )
    add_common_options(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    storescp = find_dcmtk_tool("storescp", args.dcmtk_dir)
    storescu = find_dcmtk_tool("storescu", args.dcmtk_dir)
    if not storescp or not storescu:
        raise SetupError("DCMTK storescp and storescu are needed (apt-get install dcmtk)")
    with tempfile.TemporaryDirectory(prefix="scp-bench-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        root = args.corpus_dir or work / "corpora"
        corpora = [
            prepare_corpus(size, count, root, args.seed, work / "subsets", count)
            for size, count in (("tiny", args.tiny), ("small", args.small))
            if count > 0
        ]
        receivers: list[Receiver] = [
            StoreScp(storescp, work / "out-storescp", work / "storescp.log"),
            MigratorScp(work / "out-migrator", work / "migrator-scp.log", args.scp_processes),
        ]
        rows: dict[tuple[str, str, str], Row] = {}
        with Spawner() as spawner:
            for receiver in receivers:
                receiver.start()
            try:
                for corpus in corpora:
                    warm_page_cache(corpus.full)
                for rep in range(args.repeat):
                    for corpus in corpora:
                        for sender, template in senders(storescu).items():
                            for receiver in receivers:
                                row = rows.setdefault(
                                    (corpus.name, sender, receiver.name),
                                    Row(sender, receiver.name, corpus.full.files),
                                )
                                timed(spawner, template, corpus.full.dir, receiver, row, rep, args)
            finally:
                for receiver in receivers:
                    receiver.stop()
        return report(corpora, rows, args)


def timed(
    spawner: Spawner,
    template: list[str],
    directory: Path,
    receiver: Receiver,
    row: Row,
    rep: int,
    args: argparse.Namespace,
) -> None:
    receiver.empty()
    argv = [
        a.replace("{port}", str(receiver.port)).replace("{dir}", str(directory)) for a in template
    ]
    res = spawner.run(argv, repo_env(), args.timeout)
    stored = receiver.count()
    label = f"rep {rep + 1}: {row.sender} -> {receiver.name}, {row.files} files"
    if res.rc == 0 and stored == row.files:
        row.seconds.append(res.seconds)
        log(f"{label}: {row.files / res.seconds:,.0f} files/s")
    else:
        row.failures.append(f"rc {res.rc}, {stored} files written")
        log(f"{label}: FAILED rc {res.rc}, {stored} files written\n{tail(res.output)}")


def report(
    corpora: list[Any], rows: dict[tuple[str, str, str], Row], args: argparse.Namespace
) -> int:
    print(
        f"\nreceivers: DCMTK storescp --fork -od and migrator scp --no-organize "
        f"--processes {args.scp_processes}, both writing "
        f"every file, max PDU {PDU}, TCP_NODELAY=1; {args.repeat} repetitions, median\n"
    )
    print("| corpus | sender | receiver | files | files/s | migrator scp ÷ storescp |")
    print("|---|---|---|---:|---:|---:|")
    goals: list[Goal] = []
    failed = False
    for corpus in corpora:
        for sender in senders("storescu"):
            ours = rows[(corpus.name, sender, "migrator scp")]
            peer = rows[(corpus.name, sender, "DCMTK storescp")]
            ratio = ours.rate / peer.rate if ours.rate and peer.rate else None
            for row in (peer, ours):
                failed |= bool(row.failures)
                rate = f"{row.rate:,.0f}" if row.rate else "failed"
                shown = f"{ratio:.2f}" if row is ours and ratio is not None else "–"
                print(
                    f"| {corpus.name} | {sender} | {row.where} | {row.files} | {rate} | {shown} |"
                )
            if ratio is not None:
                goals.append(
                    (f"migrator scp ≥ 1.0× storescp, {sender}, {corpus.size}", ratio, ratio >= 1.0)
                )
    print_goals(goals, 17)
    if args.json:
        import json

        data = {
            "rows": [
                {
                    "corpus": c,
                    "sender": sender,
                    "receiver": r,
                    "files": row.files,
                    "seconds": row.seconds,
                    "files_per_s": row.rate,
                    "failures": row.failures,
                }
                for (c, sender, r), row in rows.items()
            ],
            "goals": goals,
        }
        args.json.write_text(json.dumps(data, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
