#!/usr/bin/env python3
"""C-STORE throughput of ``migrator store`` and ``migrator run`` against peer senders, in one
invocation.

Every sender sends the same synthetic corpora to the same DCMTK ``storescp --fork --ignore``
receiver on loopback, and the runs are interleaved per repetition (A, B, C, A, B, C, ...) so
that the noise of a shared machine lands on all senders alike. Per run: wall time, and the CPU
time and peak RSS of the sender's whole process tree (bench/measure.py). The numbers to quote
are the ratios to the best peer printed in the same tables, not the absolute rates (see
bench/README.md). An RSS probe sends one ~1 GB file; a goals table ends the output.

Run it with the project's virtualenv::

    .venv/bin/python bench/store_bench.py --help
    .venv/bin/python bench/store_bench.py          # the four corpora, ~10 minutes on 2 cores

The script depends on the installed ``migrator`` package (corpus generator, free ports) but not
on ``tests/``, so it works from a plain checkout with the venv and DCMTK installed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/ is sys.path[0], make `bench.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results as rs
from bench.corpora import (
    PROBE_NAME,
    SIZES,
    Corpus,
    FileSet,
    link_subset,
    parse_corpus_spec,
    prepare_corpus,
    warm_page_cache,
    write_big_file,
)
from bench.measure import SetupError, Spawner, log, sender_env, tail
from bench.receiver import AET, DEFAULT_PDU, HOST, Receiver, find_dcmtk_tool, version_line
from bench.senders import (
    ALL_SENDERS,
    DEFAULT_SENDERS,
    RUN,
    Sender,
    build_senders,
    is_store,
    known,
    run_phases,
    storescu_verbose_count,
)

DEFAULT_CORPORA = ("tiny:2000", "small:1000", "medium:100", "large:4")
#: Not in the RSS probe: the CLI decodes the whole file; 4 processes split one file into one.
RSS_SKIP = ("pynetdicom-4p", "pynetdicom-cli")
# Exit codes of this script.
EXIT_OK, EXIT_SENDER_FAILED, EXIT_SETUP = 0, 1, 2


# --------------------------------------------------------------------------------------------
# Measurement


def measure_once(
    spawner: Spawner,
    outcome: rs.Outcome,
    receiver: Receiver,
    runs_dir: Path,
    env: dict[str, str],
    timeout: float,
) -> None:
    """One timed run of ``outcome.sender`` with a fresh scratch directory (``{scratch}``: the
    dcmsend report, migrator run's ``--state-dir`` and ``--report``)."""
    if not receiver.alive():
        raise SetupError(f"storescp died:\n{tail(receiver.log())}")
    sender, fs = outcome.sender, outcome.fileset
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=runs_dir))
    try:
        res = spawner.run(sender.argv(fs.dir, receiver.port, scratch), env, timeout)
        sent, note = sender.count(res, scratch, fs.files)
        phases = run_phases(res, scratch) if sender.name == RUN else None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    run = rs.Run(
        res.seconds, res.rc, sent, res.cpu_user_s, res.cpu_sys_s, res.maxrss_kb,
        res.orphans, res.left_running, phases,
    )  # fmt: skip
    outcome.runs.append(run)
    if res.rc is None:
        outcome.error = f"timed out after {timeout:.0f} s"
    elif res.rc != 0:
        outcome.error = f"exit code {res.rc}"
    elif sent != fs.files or note:
        outcome.error = f"sent {sent} of {fs.files} files" + (f" ({note})" if note else "")
    if outcome.error:
        outcome.error += f"\n{tail(res.output)}"
    if res.left_running:
        log(f"warning: {sender.label} left {res.left_running} process(es) running; killed")
    if not receiver.alive():
        raise SetupError(f"storescp died during {sender.label}:\n{tail(receiver.log())}")


def verify_storescu(
    spawner: Spawner,
    sender: Sender,
    corpus: Corpus,
    receiver: Receiver,
    env: dict[str, str],
    timeout: float,
) -> tuple[int, str | None]:
    """One untimed ``storescu -v`` pass that counts the success responses (the timed runs are
    quiet: see senders.storescu_quiet_count)."""
    argv = sender.argv(corpus.full.dir, receiver.port, Path("."))
    res = spawner.run([argv[0], "-v", *argv[1:]], env, timeout)
    counted = storescu_verbose_count(res.output)
    if res.rc != 0 or counted != corpus.full.files:
        return counted, f"-v pass: exit {res.rc}, {counted} of {corpus.full.files} stored\n" + tail(
            res.output
        )
    return counted, None


def progress(rep: str, name: str, o: rs.Outcome) -> None:
    r = o.runs[-1]
    rate = "FAILED" if o.error else f"{o.fileset.files / r.seconds:9.1f} files/s"
    log(
        f"[{rep}] {name:<12} {o.sender.label:<30} {r.seconds:7.3f} s  {rate}  "
        f"CPU {r.cpu_s:6.2f} s  RSS {r.maxrss_kb / 1024:5.0f} MB"
        + (f"  {o.error.splitlines()[0]}" if o.error else "")
    )


# --------------------------------------------------------------------------------------------
# Machine description


def machine_info(storescu: str | None, dcmsend: str | None) -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    def git(*args: str) -> str:
        repo = Path(__file__).resolve().parent.parent
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()

    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = git("rev-parse", "--short", "HEAD")
        commit = f"{head}{' (dirty work tree)' if git('status', '--porcelain') else ''}" or None
    redis_server = shutil.which("redis-server")
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "kernel": platform.release(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "storescu": version_line(storescu) if storescu else None,
        "dcmsend": version_line(dcmsend) if dcmsend else None,
        "redis_server": version_line(redis_server) if redis_server else None,
        "pynetdicom": version("pynetdicom"),
        "pydicom": version("pydicom"),
        "celery": version("celery"),
        "pacs-migrator": version("pacs-migrator"),
        "git": commit,
        "command": ["bench/store_bench.py", *sys.argv[1:]],
    }


def print_head(info: dict[str, Any], args: argparse.Namespace) -> None:
    cpus = info["cpus_usable"] or info["cpu_count"]
    load = [round(x, 2) for x in info["loadavg_at_start"] or []]
    print(
        "\n".join(
            [
                f"date {info['date']}  host {info['hostname']}  CPUs {info['cpu_count']} "
                f"(usable {cpus})  kernel {info['kernel']}  load at start {load}",
                f"python {info['python']}  pacs-migrator {info['pacs-migrator']}  "
                f"pynetdicom {info['pynetdicom']}  pydicom {info['pydicom']}  "
                f"celery {info['celery']}  git {info['git']}",
                f"storescu: {info['storescu']}  dcmsend: {info['dcmsend']}  "
                f"embedded Redis: {info['redis_server']}",
                f"command: {' '.join(info['command'])}",
                f"receiver: storescp --fork --ignore -pdu {args.pdu} "
                f"({'stock: no TCP_NODELAY' if args.stock_receiver else 'TCP_NODELAY=1'}); "
                f"repeat {args.repeat}, median; files/s include process start-up; "
                "CPU s and peak RSS: the sender's whole process tree",
            ]
        )
    )


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    cpus = os.cpu_count() or 2
    p = argparse.ArgumentParser(
        prog="store_bench.py",
        description="Compare `migrator store` and `migrator run` with DCMTK storescu/dcmsend "
        "and pynetdicom on the same receiver (DCMTK storescp --fork --ignore) and corpora, "
        "interleaved: files/s, MB/s, CPU and peak RSS of each sender's process tree, ratios to "
        "the best peer, an RSS probe with a 1 GB file, and the goals of issue 8.",
        epilog="'× best peer' = files/s of the row ÷ files/s of the fastest of storescu, "
        "dcmsend and pynetdicom in the same table (above 1: faster than every peer). Quote "
        "ratios from one run, not absolute rates.",
    )
    p.add_argument(
        "--corpus",
        action="append",
        metavar="SIZE:COUNT",
        type=parse_corpus_spec,
        help=f"corpus to generate, repeatable; SIZE one of {', '.join(SIZES)} "
        f"(default: {' '.join(DEFAULT_CORPORA)})",
    )
    p.add_argument(
        "--corpus-dir",
        type=Path,
        help="generate corpora here and reuse them on later runs (default: a temp dir, removed)",
    )
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default: 0)")
    p.add_argument(
        "--repeat", type=int, default=5, help="interleaved repetitions; the median is reported"
    )
    p.add_argument(
        "--senders",
        default=",".join(DEFAULT_SENDERS),
        help=f"comma-separated subset of {','.join(ALL_SENDERS)} (and migrator-jN for "
        "migrator store -j N), run in this order (default: all but pynetdicom-cli)",
    )
    p.add_argument(
        "--run-workers",
        type=int,
        default=cpus,
        help=f"migrator run --workers N (default: CPU count, {cpus}; migrator run's own default)",
    )
    p.add_argument(
        "--pynetdicom-max-files",
        type=int,
        default=300,
        help="pynetdicom-cli sends only the first N files of each corpus (it runs at tens of "
        "files/s); its files/s stay comparable (default: 300)",
    )
    p.add_argument(
        "--pdu", type=int, default=DEFAULT_PDU, help=f"max PDU everywhere (default: {DEFAULT_PDU})"
    )
    p.add_argument(
        "--no-startup-probe",
        action="store_true",
        help="skip the 1-file corpus that shows each sender's start-up + association cost",
    )
    p.add_argument(
        "--rss-probe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send one ~1 GB file (sparse, made once) with each sender but "
        f"{' and '.join(RSS_SKIP)} (migrator store: the first -j only) and report their "
        "peak RSS (default: on)",
    )
    p.add_argument(
        "--timeout", type=float, default=300, help="per-run timeout in seconds (default: 300)"
    )
    p.add_argument("--dcmtk-dir", type=Path, help="look for DCMTK tools here first")
    p.add_argument(
        "--stock-receiver",
        action="store_true",
        help="run storescp as shipped, without TCP_NODELAY=1 in its environment (Nagle on: "
        "a sender that delays its ACKs waits ~40 ms per file; issue 16)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    args.corpus = args.corpus or [parse_corpus_spec(s) for s in DEFAULT_CORPORA]
    args.senders = [s.strip() for s in args.senders.split(",") if s.strip()]
    bad = [s for s in args.senders if not known(s)]
    if bad or not args.senders or len(set(args.senders)) != len(args.senders):
        p.error(
            f"--senders: expected distinct names from {', '.join(ALL_SENDERS)} "
            "(or migrator-jN for any N up to 99)"
        )
    if len(set(args.corpus)) != len(args.corpus):
        p.error("--corpus: the same SIZE:COUNT was given twice")
    if args.repeat < 1 or args.pynetdicom_max_files < 1 or args.timeout <= 0:
        p.error("--repeat, --pynetdicom-max-files and --timeout must be positive")
    if not 1 <= args.run_workers <= 256:
        p.error("--run-workers must be within 1..256")
    if not 4096 <= args.pdu <= 131072:
        p.error("--pdu must be within 4096..131072 (DCMTK's range)")
    return args


def exit_on_sigterm(signum: int, _frame: object) -> None:
    # SystemExit unwinds through the finally blocks that stop storescp and remove temp dirs.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.monotonic()
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    storescp = find_dcmtk_tool("storescp", args.dcmtk_dir)
    if storescp is None:
        log("error: DCMTK storescp not found on PATH; apt-get install -y dcmtk")
        return EXIT_SETUP
    storescu = find_dcmtk_tool("storescu", args.dcmtk_dir)
    dcmsend = find_dcmtk_tool("dcmsend", args.dcmtk_dir)
    senders, skipped = build_senders(args.senders, args.pdu, storescu, dcmsend, args.run_workers)
    info = machine_info(storescu, dcmsend)
    env = sender_env()
    # Our code byte-compiled, as DCMTK's is: with PYTHONDONTWRITEBYTECODE (set on these
    # machines) a module edited since the last bootstrap would be compiled at every start.
    repo = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(repo / "migrator"), str(repo / "workers")],
        check=False,
        stdout=subprocess.DEVNULL,
    )

    work = Path(tempfile.mkdtemp(prefix="store-bench-"))
    receiver = Receiver(storescp, work, args.pdu, stock=args.stock_receiver)
    spawner = Spawner()
    results: dict[str, list[rs.Outcome]] = {}
    rss: list[rs.Outcome] = []
    big: FileSet | None = None
    verified: dict[str, int] = {}
    try:
        root = args.corpus_dir.resolve() if args.corpus_dir else work / "corpora"
        corpora = [
            prepare_corpus(size, n, root, args.seed, work / "subsets", args.pynetdicom_max_files)
            for size, n in args.corpus
        ]
        # One file, sent by everyone: the untimed warm-up, and unless disabled a timed "corpus"
        # that shows process start-up plus one association, with no throughput in it.
        first = sorted(p for p in corpora[0].full.dir.rglob("*") if p.is_file())[:1]
        probe = link_subset(first, work / PROBE_NAME)
        if not args.no_startup_probe:
            corpora.insert(0, Corpus(PROBE_NAME, corpora[0].size, probe, probe))
        if args.rss_probe:
            big = write_big_file(root, args.seed)
        runs_dir = work / "runs"
        runs_dir.mkdir()

        receiver.start()
        log(f"receiver: {storescp} on {HOST}:{receiver.port}")
        if not spawner.start().subreaper:
            log("warning: not a child subreaper: CPU of orphaned descendants is not counted")

        # Warm-up, untimed: page cache, and one send per sender so the first timed run does not
        # pay for compiling .pyc files or loading shared libraries.
        for c in corpora:
            warm_page_cache(c.full)
        for s in senders:
            warm = rs.Outcome(s, probe)
            measure_once(spawner, warm, receiver, runs_dir, env, args.timeout)
            if warm.error:
                log(f"warm-up of {s.label} failed: {warm.error}")

        results = {
            c.name: [rs.Outcome(s, c.subset if s.uses_subset else c.full) for s in senders]
            for c in corpora
        }
        scu = next((s for s in senders if s.name == "storescu"), None)
        if scu is not None:
            for c in corpora:
                counted, problem = verify_storescu(spawner, scu, c, receiver, env, args.timeout)
                verified[c.name] = counted
                if problem:
                    next(o for o in results[c.name] if o.sender is scu).error = problem

        # Interleaved: every repetition runs each corpus through every sender in turn, so slow
        # phases of a shared machine hit all senders rather than one.
        for rep in range(1, args.repeat + 1):
            for c in corpora:
                for o in results[c.name]:
                    if o.error:  # a sender that failed once is reported failed, not re-tried
                        continue
                    measure_once(spawner, o, receiver, runs_dir, env, args.timeout)
                    progress(f"{rep}/{args.repeat}", c.name, o)

        if big is not None:
            warm_page_cache(big)
            first_store = next((s for s in senders if is_store(s.name)), None)
            for s in senders:
                if s.name not in RSS_SKIP and (s is first_store or not is_store(s.name)):
                    rss.append(rs.Outcome(s, big))
                    measure_once(spawner, rss[-1], receiver, runs_dir, env, args.timeout)
                    progress("rss", "big-1gb", rss[-1])
    except SetupError as exc:
        log(f"error: {exc}")
        return EXIT_SETUP
    finally:
        spawner.stop()
        receiver.stop()
        shutil.rmtree(work, ignore_errors=True)

    # Report.
    print_head(info, args)
    for c in corpora:
        print()
        print(rs.table(c, results[c.name], skipped, c.name == PROBE_NAME))
    run_outcomes = {c.name: o for c in corpora for o in results[c.name] if o.sender.name == RUN}
    if run_outcomes:
        print()
        print(rs.phases_table(corpora, run_outcomes))
    if big is not None:
        print()
        print(rs.rss_table(big, rss))
    goals = rs.goals(corpora, results, rss)
    if goals:
        print()
        print(rs.goals_table(goals))
    failures = [(c.name, o) for c in corpora for o in results[c.name] if not o.ok]
    failures += [("rss-probe", o) for o in rss if not o.ok]
    for name, o in failures:
        print(f"\nFAILED {o.sender.label} on {name}:\n{o.error}")
    wall = time.monotonic() - t_start
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    print(f"\nbench wall time {wall:.0f} s; load at end {load}")

    if args.json:
        doc: dict[str, Any] = {
            "machine": info,
            "settings": {
                "receiver": f"storescp --fork --ignore -pdu {args.pdu} -aet {AET}",
                "stock_receiver": args.stock_receiver,
                "repeat": args.repeat,
                "pdu": args.pdu,
                "seed": args.seed,
                "run_workers": args.run_workers,
                "pynetdicom_max_files": args.pynetdicom_max_files,
                "senders": args.senders,
                "rss_probe": args.rss_probe,
            },
            "wall_s": wall,
            "skipped": skipped,
            "corpora": [
                {
                    "name": c.name,
                    "size": c.size,
                    "files": c.full.files,
                    "bytes": c.full.bytes,
                    "startup_probe": c.name == PROBE_NAME,
                    "storescu_verified_files": verified.get(c.name),
                    "senders": [rs.outcome_json(o, results[c.name]) for o in results[c.name]],
                }
                for c in corpora
            ],
            "rss_probe": None
            if big is None
            else {"bytes": big.bytes, "senders": [rs.outcome_json(o, rss) for o in rss]},
            "goals": goals,
            "ok": not failures,
        }
        args.json.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return EXIT_SENDER_FAILED if failures else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
