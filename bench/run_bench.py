#!/usr/bin/env python3
"""Throughput of ``migrator run`` (the distributed engine, embedded default) in one invocation.

``migrator run CORPUS --workers N`` without ``--redis-url`` starts its own Redis and one local
Celery worker with N processes, plans the job, sends, waits for every outcome and stops it all.
This script times that whole command against DCMTK ``storescu`` (one association) and
``migrator store -j N`` on the same synthetic corpus and the same DCMTK
``storescp --fork --ignore`` receiver, interleaved per repetition, and prints files/s, MB/s
and the ratios ``migrator run / X``. A 1-file corpus shows the fixed cost of each command
(for ``migrator run``: Redis and worker start and stop), and a second table splits each
``migrator run`` into start-up, job (plan + send + wait) and stop, read from its ``--report``.

Every ``migrator run`` gets a fresh ``--state-dir``: with the same one, the second run would
resume the finished job and send nothing. A run counts only with exit code 0, a report whose
``totals.stored`` is every file (no failure, nothing fatal) and whose job started after this
run was launched (so it was not resumed).

Run it with the project's virtualenv::

    .venv/bin/python bench/run_bench.py --help

Receiver, corpora, senders, timing and proof of delivery come from ``store_bench.py``
(see bench/README.md); this script adds the ``migrator run`` sender and its tables.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from bench import store_bench as sb
except ModuleNotFoundError:  # run as a script: bench/ itself is sys.path[0]
    import store_bench as sb  # type: ignore[no-redef]

RUN, STORE, SCU = "migrator-run", "migrator-store", "storescu"
DEFAULT_CORPORA = ("tiny:2000", "small:300")
REPORT_NAME = "run-report.json"
# Clock slack when checking that the job started after the launch (same host clock, but
# time.time() is taken in two processes).
_CLOCK_SLACK_S = 0.05


# --------------------------------------------------------------------------------------------
# The migrator run sender


def _run_count(res: sb.ProcResult, scratch: Path, expected: int) -> tuple[int | None, str]:
    """Files stored according to the run's ``--report`` (``-q`` prints no counts)."""
    try:
        report = json.loads((scratch / REPORT_NAME).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"no readable --report ({exc.__class__.__name__})"
    totals = report.get("totals") or {}
    stored = totals.get("stored")
    if not isinstance(stored, int):
        return None, "no totals.stored in the report"
    problems = []
    if totals.get("planned") != expected:
        problems.append(f"planned {totals.get('planned')}")
    if totals.get("failed"):
        problems.append(f"{totals['failed']} failed")
    if report.get("fatal"):
        problems.append(f"fatal: {report['fatal']}")
    if report.get("exit_status") != 0:
        problems.append(f"report exit_status {report.get('exit_status')}")
    return stored, "; ".join(problems)


def migrator_run_sender(workers: int, pdu: int) -> sb.Sender:
    """``migrator run`` on the embedded Redis; ``{scratch}`` is a fresh directory per run."""
    template = [*sb.migrator_command(), "run", "{dir}", "--host", sb.HOST, "--port", "{port}"]
    template += ["--called-ae", sb.AET, "--state-dir", "{scratch}/state"]
    template += ["--workers", str(workers), "--max-pdu", str(pdu)]
    template += ["-q", "--report", "{scratch}/" + REPORT_NAME]
    return sb.Sender(
        RUN,
        f"migrator run --workers {workers}",
        template,
        _run_count,
        "exit 0; --report totals.stored = files, failed 0, no fatal; job started after launch "
        "(fresh --state-dir: not resumed)",
    )


@dataclass
class Phases:
    """One ``migrator run``, split at the report's job ``started``/``finished`` stamps."""

    startup_s: float  # launch -> job started: imports, embedded Redis, worker up (ping)
    job_s: float  # plan + send + wait for every outcome (the report's duration)
    stop_s: float  # job finished -> exit: worker soft shutdown, Redis stop, summary, report

    @property
    def fixed_s(self) -> float:
        return self.startup_s + self.stop_s


def measure(
    outcome: sb.Outcome,
    receiver: sb.Receiver,
    work: Path,
    env: dict[str, str],
    timeout: float,
    phases: list[Phases] | None,
) -> None:
    """One timed run of ``outcome.sender`` in a fresh scratch directory (fresh --state-dir)."""
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    try:
        t_launch = time.time()
        sb.measure_once(outcome.sender, outcome, receiver, scratch, env, timeout)
        t_exit = time.time()
        if outcome.sender.name != RUN or outcome.error:
            return
        try:
            report = json.loads((scratch / REPORT_NAME).read_text("utf-8"))
            started, finished = float(report["started"]), float(report["finished"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            outcome.runs[-1].files_sent = None
            outcome.error = f"no job started/finished stamps in the report ({exc!r})"
            return
        if started < t_launch - _CLOCK_SLACK_S:
            # A job that started before we launched was resumed: it sent nothing this time.
            outcome.runs[-1].files_sent = 0
            outcome.error = (
                f"the report's job started {t_launch - started:.1f} s before this run: "
                "resumed, not sent"
            )
        elif phases is not None:
            phases.append(Phases(started - t_launch, finished - started, t_exit - finished))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Report


def median_phases(phases: list[Phases]) -> dict[str, float] | None:
    if not phases:
        return None
    return {
        "startup_s": statistics.median(p.startup_s for p in phases),
        "job_s": statistics.median(p.job_s for p in phases),
        "stop_s": statistics.median(p.stop_s for p in phases),
        "fixed_s": statistics.median(p.fixed_s for p in phases),
    }


def net_rates(
    outcomes: list[sb.Outcome], startup: dict[str, float], run_phases: list[Phases]
) -> dict[str, float | None]:
    """files/s once running, per sender (empty for the probe: pass ``startup={}``).

    storescu and ``migrator store``: files ÷ (median − their own 1-file median), as in
    store_bench.py. ``migrator run``: files ÷ the median job time of its report (plan + send +
    wait; Redis and worker start and stop left out), measured rather than subtracted, because
    its ~4 s fixed cost varies by more than a small corpus's whole job.
    """
    if not startup:
        return {}
    out: dict[str, float | None] = {}
    for o in outcomes:
        if o.sender.name == RUN:
            m = median_phases(run_phases)
            ok = o.ok and m is not None and m["job_s"] > 0
            out[RUN] = o.fileset.files / m["job_s"] if ok and m else None
        else:
            out[o.sender.name] = sb.net_rate(o, startup)
    return out


def net_ratio(net: dict[str, float | None], name: str) -> float | None:
    """migrator run's rate once running ÷ ``name``'s."""
    a, b = net.get(RUN), net.get(name)
    return None if a is None or b is None else a / b


def table(title: str, outcomes: list[sb.Outcome], net: dict[str, float | None]) -> str:
    run = next((o for o in outcomes if o.sender.name == RUN), None)
    rows = [
        f"### {title}",
        "",
        "| sender | files | MB | s (median) | s (min–max) | files/s | MB/s "
        "| files/s excl. start-up | migrator run / X | migrator run / X excl. start-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        fs = o.fileset
        mb = f"{fs.bytes / 1e6:,.1f}"
        label = o.sender.label
        if not o.ok:
            reason = (o.error or "no run").splitlines()[0]
            rows.append(f"| {label} | {fs.files} | {mb} | FAILED: {reason} |" + " |" * 6)
            continue
        secs = [r.seconds for r in o.runs]
        rate = net.get(o.sender.name)
        rows.append(
            f"| {label} | {fs.files} | {mb} | {o.median_s:.3f} "
            f"| {min(secs):.3f}–{max(secs):.3f} | {sb.fmt_rate(o.files_per_s)} "
            f"| {o.mb_per_s:,.1f} | {'–' if rate is None else sb.fmt_rate(rate)} "
            f"| {sb.fmt_ratio(sb.ratio(run, o))} | {sb.fmt_ratio(net_ratio(net, o.sender.name))} |"
        )
    return "\n".join(rows)


def phases_table(
    corpora: list[sb.Corpus], outcomes: dict[str, sb.Outcome], phases: dict[str, list[Phases]]
) -> str:
    rows = [
        "### migrator run: where the time goes (medians per column)",
        "",
        "| corpus | files | wall s | start-up s | job s | stop s | start-up + stop | "
        "job files/s | job MB/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in corpora:
        o, m = outcomes[c.name], median_phases(phases[c.name])
        if not o.ok or m is None:
            rows.append(f"| {c.name} | {c.full.files} | FAILED |" + " |" * 6)
            continue
        share = m["fixed_s"] / o.median_s
        rows.append(
            f"| {c.name} | {c.full.files} | {o.median_s:.3f} | {m['startup_s']:.3f} "
            f"| {m['job_s']:.3f} | {m['stop_s']:.3f} | {m['fixed_s']:.3f} ({share:.0%}) "
            f"| {sb.fmt_rate(c.full.files / m['job_s'])} "
            f"| {c.full.bytes / 1e6 / m['job_s']:,.1f} |"
        )
    return "\n".join(rows)


def ratio_summary(
    corpora: list[sb.Corpus],
    results: dict[str, list[sb.Outcome]],
    nets: dict[str, dict[str, float | None]],
) -> tuple[str, dict[str, dict[str, float | None]]]:
    rows = [
        "### ratios (files/s of migrator run ÷ files/s of X; above 1: migrator run is faster)",
        "",
        "| corpus | run / storescu | run / store | run / storescu excl. start-up "
        "| run / store excl. start-up |",
        "|---|---:|---:|---:|---:|",
    ]
    doc: dict[str, dict[str, float | None]] = {}
    for c in corpora:
        by = {o.sender.name: o for o in results[c.name]}
        run, scu, store = by.get(RUN), by.get(SCU), by.get(STORE)
        d = {
            "run_over_storescu": sb.ratio(run, scu) if scu else None,
            "run_over_store": sb.ratio(run, store) if store else None,
            "run_over_storescu_excl_startup": net_ratio(nets[c.name], SCU),
            "run_over_store_excl_startup": net_ratio(nets[c.name], STORE),
        }
        doc[c.name] = d
        rows.append(f"| {c.name} | " + " | ".join(sb.fmt_ratio(v) for v in d.values()) + " |")
    return "\n".join(rows), doc


def outcome_json(
    o: sb.Outcome, run: sb.Outcome | None, net: dict[str, float | None]
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "sender": o.sender.name,
        "label": o.sender.label,
        "argv_template": o.sender.template,
        "status": "ok" if o.ok else "failed",
        "error": o.error,
        "files": o.fileset.files,
        "bytes": o.fileset.bytes,
        "count_method": o.sender.count_method,
        "runs": [{"seconds": r.seconds, "rc": r.rc, "files_sent": r.files_sent} for r in o.runs],
    }
    if o.ok:
        d.update(
            median_s=o.median_s,
            files_per_s=o.files_per_s,
            mb_per_s=o.mb_per_s,
            files_per_s_excl_startup=net.get(o.sender.name),
            run_over_x=sb.ratio(run, o),
            run_over_x_excl_startup=net_ratio(net, o.sender.name),
        )
    return d


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    cpus = os.cpu_count() or 2
    p = argparse.ArgumentParser(
        prog="run_bench.py",
        description="Compare `migrator run` (embedded Redis + local Celery workers, a fresh "
        "--state-dir per run) with DCMTK storescu and `migrator store -j N` on the same "
        "receiver (DCMTK storescp --fork --ignore) and corpus, interleaved, and print "
        "throughput ratios and where migrator run's time goes.",
        epilog="'migrator run / X' = migrator run's files/s divided by X's (above 1: migrator "
        "run is faster). Quote ratios from one run, not absolute rates.",
    )
    p.add_argument(
        "--corpus",
        action="append",
        metavar="SIZE:COUNT",
        type=sb.parse_corpus_spec,
        help=f"corpus to generate, repeatable; SIZE one of {', '.join(sb.SIZES)} "
        f"(default: {' '.join(DEFAULT_CORPORA)})",
    )
    p.add_argument(
        "--repeat", type=int, default=3, help="interleaved repetitions; the median is reported"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=cpus,
        help="migrator run --workers N and migrator store -j N "
        f"(default: CPU count, {cpus}; migrator run's own default)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument(
        "--corpus-dir",
        type=Path,
        help="generate corpora here and reuse them on later runs (default: a temp dir, removed)",
    )
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default: 0)")
    p.add_argument(
        "--pdu",
        type=int,
        default=sb.DEFAULT_PDU,
        help=f"max PDU everywhere (default: {sb.DEFAULT_PDU})",
    )
    p.add_argument(
        "--timeout", type=float, default=600, help="per-run timeout in seconds (default: 600)"
    )
    p.add_argument("--dcmtk-dir", type=Path, help="look for DCMTK tools here first")
    args = p.parse_args(argv)
    args.corpus = args.corpus or [sb.parse_corpus_spec(s) for s in DEFAULT_CORPORA]
    if len(set(args.corpus)) != len(args.corpus):
        p.error("--corpus: the same SIZE:COUNT was given twice")
    if args.repeat < 1 or args.timeout <= 0 or not 1 <= args.workers <= 256:
        p.error("--repeat and --timeout must be positive, --workers within 1..256")
    if not 4096 <= args.pdu <= 131072:
        p.error("--pdu must be within 4096..131072 (DCMTK's range)")
    return args


def machine_info(storescu: str, env: dict[str, str], workers: int) -> dict[str, Any]:
    info = sb.machine_info(storescu, None)
    del info["dcmsend"]
    redis_server = shutil.which("redis-server", path=env.get("PATH"))
    info["redis_server"] = (
        f"{redis_server}: {sb._version_line(redis_server)}" if redis_server else None
    )
    for dist in ("celery", "redis"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = None
    info["workers"] = workers
    return info


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, sb._exit_on_sigterm)
    storescp = sb.find_dcmtk_tool("storescp", args.dcmtk_dir)
    storescu = sb.find_dcmtk_tool("storescu", args.dcmtk_dir)
    if storescp is None or storescu is None:
        sb.log("error: DCMTK storescp/storescu not found on PATH; apt-get install -y dcmtk")
        return sb.EXIT_SETUP
    env = sb.sender_env()  # TCP_NODELAY=1, and no MIGRATOR_* (no --redis-url, no state dir)
    senders = [
        migrator_run_sender(args.workers, args.pdu),
        sb.migrator_store_sender(args.workers, args.pdu, name=STORE),
        sb.storescu_sender(storescu, args.pdu),
    ]
    info = machine_info(storescu, env, args.workers)

    work = Path(tempfile.mkdtemp(prefix="run-bench-"))
    receiver = sb.Receiver(storescp, work, args.pdu)
    phases: dict[str, list[Phases]] = {}
    try:
        root = args.corpus_dir.resolve() if args.corpus_dir else work / "corpora"
        # No pynetdicom here: the subsets are the full corpora (subset_max = COUNT).
        corpora = [
            sb.prepare_corpus(size, n, root, args.seed, work / "subsets", n)
            for size, n in args.corpus
        ]
        # The 1-file corpus: the warm-up, and the timed start-up probe (for migrator run, the
        # fixed cost of Redis + worker start and stop).
        first = sorted(p for p in corpora[0].full.dir.rglob("*") if p.is_file())[:1]
        probe = sb._link_subset(first, work / sb.PROBE_NAME)
        corpora.insert(0, sb.Corpus(sb.PROBE_NAME, corpora[0].size, probe, probe))
        runs_dir = work / "runs"
        runs_dir.mkdir()

        receiver.start()
        sb.log(f"receiver: {storescp} on {sb.HOST}:{receiver.port}")
        for c in corpora:
            sb.warm_page_cache(c.full)
        for s in senders:  # untimed: .pyc files, shared libraries, redis-server binary
            scratch = Path(tempfile.mkdtemp(prefix="warm-", dir=runs_dir))
            res = sb.run_timed(s.argv(probe.dir, receiver.port, scratch), env, args.timeout)
            shutil.rmtree(scratch, ignore_errors=True)
            if res.rc != 0:
                sb.log(f"warm-up of {s.label} exited {res.rc}:\n{sb.tail(res.output)}")

        results = {c.name: [sb.Outcome(s, c.full) for s in senders] for c in corpora}
        phases = {c.name: [] for c in corpora}
        verified: dict[str, int] = {}
        for c in corpora:
            counted, problem = sb.verify_storescu(senders[2], c, receiver, env, args.timeout)
            verified[c.name] = counted
            if problem:
                results[c.name][2].error = problem

        # Interleaved: each repetition runs every corpus through every sender in turn.
        for rep in range(1, args.repeat + 1):
            for c in corpora:
                for o in results[c.name]:
                    if o.error:  # a sender that failed once is reported failed, not re-tried
                        continue
                    ph = phases[c.name] if o.sender.name == RUN else None
                    measure(o, receiver, runs_dir, env, args.timeout, ph)
                    r = o.runs[-1]
                    rate = "FAILED" if o.error else f"{o.fileset.files / r.seconds:9.1f} files/s"
                    extra = ""
                    if ph and not o.error:
                        extra = (
                            f"  (start-up {ph[-1].startup_s:.2f} s, job {ph[-1].job_s:.2f} s, "
                            f"stop {ph[-1].stop_s:.2f} s)"
                        )
                    sb.log(
                        f"[{rep}/{args.repeat}] {c.name:<12} {o.sender.label:<28} "
                        f"{r.seconds:7.3f} s  {rate}{extra}"
                        + (f"  {o.error.splitlines()[0]}" if o.error else "")
                    )
    except sb.SetupError as exc:
        sb.log(f"error: {exc}")
        return sb.EXIT_SETUP
    finally:
        receiver.stop()
        shutil.rmtree(work, ignore_errors=True)

    cpus = info["cpus_usable"] or info["cpu_count"]
    print(
        "\n".join(
            [
                f"date {info['date']}  host {info['hostname']}  CPUs {info['cpu_count']} "
                f"(usable {cpus})  load at start {info['loadavg_at_start']}",
                f"python {info['python']}  pacs-migrator {info['pacs-migrator']}  "
                f"celery {info['celery']}  redis-py {info['redis']}  git {info['git']}",
                f"storescu: {info['storescu']}  embedded Redis: {info['redis_server']}",
                f"receiver: storescp --fork --ignore -pdu {args.pdu} (TCP_NODELAY=1); "
                f"migrator run and store with N = {args.workers}; repeat {args.repeat}, "
                "median; files/s include process start-up and stop",
            ]
        )
    )
    startup = {o.sender.name: o.median_s for o in results[sb.PROBE_NAME] if o.ok}
    nets = {
        c.name: net_rates(
            results[c.name], {} if c.name == sb.PROBE_NAME else startup, phases[c.name]
        )
        for c in corpora
    }
    for c in corpora:
        if c.name == sb.PROBE_NAME:
            title = "start-up probe: 1 file (fixed cost of each command; read seconds)"
        else:
            title = f"{c.name}: {c.full.files} files, {c.full.bytes / 1e6:,.1f} MB"
        print()
        print(table(title, results[c.name], nets[c.name]))
    run_outcomes = {c.name: results[c.name][0] for c in corpora}
    print()
    print(phases_table(corpora, run_outcomes, phases))
    summary, ratios = ratio_summary(corpora, results, nets)
    print()
    print(summary)
    failures = [(c, o) for c in corpora for o in results[c.name] if not o.ok]
    for c, o in failures:
        print(f"\nFAILED {o.sender.label} on {c.name}:\n{o.error}")

    if args.json:
        doc: dict[str, Any] = {
            "machine": info,
            "settings": {
                "receiver": f"storescp --fork --ignore -pdu {args.pdu} -aet {sb.AET}",
                "repeat": args.repeat,
                "workers": args.workers,
                "pdu": args.pdu,
                "seed": args.seed,
            },
            "corpora": [],
            "ok": not failures,
        }
        for c in corpora:
            run = results[c.name][0]
            doc["corpora"].append(
                {
                    "name": c.name,
                    "size": c.size,
                    "files": c.full.files,
                    "bytes": c.full.bytes,
                    "startup_probe": c.name == sb.PROBE_NAME,
                    "storescu_verified_files": verified.get(c.name),
                    "ratios": ratios[c.name],
                    "run_phases": [vars(p) for p in phases.get(c.name, [])],
                    "run_phases_median": median_phases(phases.get(c.name, [])),
                    "senders": [outcome_json(o, run, nets[c.name]) for o in results[c.name]],
                }
            )
        args.json.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return sb.EXIT_SENDER_FAILED if failures else sb.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
