"""Coerced against unchanged: the same files, the same sender, one invocation (issue 18).

    .venv/bin/python bench/coerce_bench.py                        # tiny 2000 + small 300, ~2 min
    .venv/bin/python bench/coerce_bench.py --corpus tiny:1000 --repeat 3 --json /tmp/c.json

Each corpus (``migrator.synth.write_corpus``) is sent by ``migrator store -j1`` to one DCMTK
``storescp --fork --ignore`` (bench/receiver.py: it reads every dataset off the wire and
writes nothing), once as it is and once with ``--coerce`` and a mapping table that gives
every patient of the corpus a new Patient ID and an Issuer of Patient ID, interleaved within
each repetition. A coerced file has its header region rewritten and the rest streamed from
the file (migrator/coerce), so the goal of issue 18 is coerced >= 0.8x unchanged files/s.

Proof: exit 0 and the summary's "Successful: N, Failed: 0" for every timed run, and one
untimed coerced run with ``--report`` before the timed ones in which every file's entry says
"coerced by" (the table covers the corpus: a coerced run that changed nothing would be the
unchanged run again). Exit status: 0 every run sent every file; 1 a run failed; 2 the bench
could not run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pydicom

from bench.corpora import prepare_corpus
from bench.measure import SetupError, Spawner, log, sender_env, tail
from bench.receiver import AET, DEFAULT_PDU, HOST, Receiver, find_dcmtk_tool
from bench.rows import Row, add_common_options, print_goals, run_main
from bench.senders import migrator_command, migrator_count

MODES = ("unchanged", "coerced")
GOAL = 0.8


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--corpus",
        action="append",
        metavar="SIZE:COUNT",
        help="repeatable; default tiny:2000 small:300",
    )
    p.add_argument("--repeat", type=int, default=3, help="repetitions; medians (default 3)")
    add_common_options(p)
    return p.parse_args(argv)


def write_rules(corpus_dir: Path, out: Path) -> Path:
    """A rules file and a table mapping every Patient ID of the corpus to a new one."""
    ids = sorted(
        {
            str(pydicom.dcmread(f, stop_before_pixels=True).PatientID)
            for f in corpus_dir.rglob("*")
            if f.is_file()
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{pid},NEW-{n:06d},BENCH-HOSPITAL\n" for n, pid in enumerate(ids))
    (out / "patients.csv").write_text("PatientID,PatientID,IssuerOfPatientID\n" + rows)
    rules = out / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: new-ids\n    map: patients.csv\n    match: PatientID\n"
        "    missing: fail\n"
    )
    log(f"table: {len(ids)} patients")
    return rules


def store_argv(directory: Path, port: int, extra: Sequence[str] = ()) -> list[str]:
    argv = [*migrator_command(), "store", "--host", HOST, "--port", str(port)]
    return [*argv, "--called-ae", AET, "--dir", str(directory), "-R", "-j", "1", *extra]


def prove_coerced(spawner: Spawner, argv: list[str], report: Path, files: int, t: float) -> None:
    res = spawner.run([*argv, "--report", str(report)], sender_env(), t)
    entries = json.loads(report.read_text())["files"] if report.exists() else []
    coerced = sum(1 for e in entries if "coerced by new-ids" in e.get("reason", ""))
    if res.rc != 0 or coerced != files:
        raise SetupError(f"the coerced proof run coerced {coerced} of {files}:\n{tail(res.output)}")
    log(f"proof: every one of {files} files coerced")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    storescp = find_dcmtk_tool("storescp", args.dcmtk_dir)
    if storescp is None:
        print("DCMTK storescp not found (bash scripts/bootstrap.sh --dev)")
        return 2
    specs = [c.split(":") for c in (args.corpus or ["tiny:2000", "small:300"])]
    failed = False
    rows: dict[tuple[str, str], Row] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="coerce-bench-") as tmp:
        work = Path(tmp)
        root = args.corpus_dir or work / "corpora"
        receiver = Receiver(storescp, work, DEFAULT_PDU)
        receiver.start()
        try:
            with Spawner() as spawner:
                plans = []
                for size, count in specs:
                    corpus = prepare_corpus(size, int(count), root, args.seed, work / "sub", 10**9)
                    rules = write_rules(corpus.full.dir, work / f"rules-{size}")
                    base = store_argv(corpus.full.dir, receiver.port)
                    coerced = [*base, "--coerce", str(rules)]
                    prove_coerced(
                        spawner,
                        coerced,
                        work / f"proof-{size}.json",
                        corpus.full.files,
                        args.timeout,
                    )
                    plans.append((size, corpus.full.files, {"unchanged": base, "coerced": coerced}))
                    for mode in MODES:
                        rows[(size, mode)] = Row(mode, size, corpus.full.files)
                        cpu[(size, mode)] = []
                for rep in range(args.repeat):
                    for size, files, commands in plans:
                        for mode in MODES:
                            row = rows[(size, mode)]
                            res = spawner.run(commands[mode], sender_env(), args.timeout)
                            stored, note = migrator_count(res, work, files)
                            label = f"[{rep + 1}/{args.repeat}] {size} {mode}"
                            if res.rc == 0 and stored == files and not note:
                                row.seconds.append(res.seconds)
                                cpu[(size, mode)].append(res.cpu_s)
                                log(f"{label}: {files / res.seconds:,.0f} files/s")
                            else:
                                failed = True
                                row.failures.append(f"rc {res.rc}, stored {stored} {note}")
                                log(f"{label}: FAILED rc {res.rc} {note}\n{tail(res.output)}")
        finally:
            receiver.stop()
    report(rows, cpu, specs, args)
    return 1 if failed else 0


def report(
    rows: dict[tuple[str, str], Row],
    cpu: dict[tuple[str, str], list[float]],
    specs: list[list[str]],
    args: argparse.Namespace,
) -> None:
    import statistics

    print(
        f"\nreceiver: DCMTK storescp --fork --ignore; sender: migrator store -j1; "
        f"{args.repeat} repetitions, median; coerced: a PatientID -> PatientID, "
        "IssuerOfPatientID table covering every patient"
    )
    print(
        "\n| corpus | files | unchanged files/s | coerced files/s | coerced ÷ unchanged "
        "| CPU ms/file unchanged | CPU ms/file coerced |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    goals = []
    out = []
    for size, _count in specs:
        plain, coerced = rows[(size, "unchanged")], rows[(size, "coerced")]
        ratio = coerced.rate / plain.rate if coerced.rate and plain.rate else None

        def ms(values: list[float], files: int) -> str:
            return f"{statistics.median(values) / files * 1000:.2f}" if values else "–"

        print(
            f"| {size} | {plain.files} | {plain.rate or 0:,.0f} | {coerced.rate or 0:,.0f} | "
            f"{f'{ratio:.2f}' if ratio else 'FAILED'} | "
            f"{ms(cpu[(size, 'unchanged')], plain.files)} | "
            f"{ms(cpu[(size, 'coerced')], plain.files)} |"
        )
        if ratio is not None:
            goals.append((f"{size}: coerced ≥ {GOAL}× unchanged", ratio, ratio >= GOAL))
        for row in (plain, coerced):
            out.append(
                {
                    "corpus": size,
                    "mode": row.sender,
                    "files": row.files,
                    "seconds": row.seconds,
                    "cpu_s": cpu[(size, row.sender)],
                    "files_per_s": row.rate,
                    "failures": row.failures,
                }
            )
    print_goals(goals, 18)
    if args.json:
        args.json.write_text(json.dumps({"rows": out, "goals": [list(g) for g in goals]}, indent=2))


if __name__ == "__main__":
    run_main(main)
