"""Stock Orthanc against tuned Orthanc: the same senders, the same corpus, one invocation.

    .venv/bin/python bench/orthanc_bench.py                      # 1,000 tiny files, ~3 min
    .venv/bin/python bench/orthanc_bench.py --files 500 --repeat 3 --json /tmp/orthanc.json

Two throw-away Orthanc servers (Debian's ``/usr/sbin/Orthanc``, started by
``tests/peers/orthanc.py`` on free ports) receive: *stock*, as Debian ships it (no
``TCP_NODELAY`` in its environment, so DCMTK inside it writes each C-STORE response with
Nagle on), and *tuned* (``TCP_NODELAY=1``). Every sender sends to each, interleaved within a
repetition: ``migrator store -j1``, ``migrator store -j4``, ``migrator run`` (embedded
Redis, local workers, a fresh state directory per run) and DCMTK ``storescu`` (one
association). Against the stock Orthanc, storescu waits on a delayed ACK for every file
(~11 files/s measured), so it sends only the first ``--peer-files`` files there.

Proof that a run sent every file: exit code 0 *and* Orthanc's own instance count equal to
the files sent (every instance is deleted between runs, so each run stores into an empty
Orthanc and none is a no-op re-store). files/s is files ÷ wall seconds of the whole command.

The goals of issue 16 are printed with "met" / "NOT met": against the stock Orthanc, each
of ours ≥ 0.9× its own rate against the tuned one, and ≥ 20× storescu against the stock one.
Exit status: 0 every run stored every file; 1 a run failed; 2 the bench could not run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.corpora import link_subset, prepare_corpus
from bench.measure import Spawner
from bench.receiver import DEFAULT_PDU, find_dcmtk_tool
from bench.rows import (
    Row,
    add_common_options,
    print_goals,
    run_main,
    timed_into_orthanc,
)
from bench.senders import (
    Sender,
    migrator_run_sender,
    migrator_store_sender,
    storescu_sender,
)

# The Orthanc peer of the tests: free ports, a generated config, its identity checked.
from tests.peers.orthanc import ORTHANC_BINARY, OrthancPeer

PEER = "storescu"
RECEIVERS = ("stock", "tuned")
#: Orthanc's default maximum PDU is 16 KB; senders propose the largest, Orthanc sets it.
PDU = DEFAULT_PDU


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--files", type=int, default=1000, help="tiny (~10 KB) files (default 1000)")
    p.add_argument("--peer-files", type=int, default=100, help="storescu's files (stock Orthanc)")
    p.add_argument("--repeat", type=int, default=2, help="repetitions; medians (default 2)")
    p.add_argument("--workers", type=int, default=2, help="run's workers (default 2)")
    add_common_options(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    storescu = find_dcmtk_tool("storescu", args.dcmtk_dir)
    if storescu is None or not Path(ORTHANC_BINARY).exists():
        print("DCMTK storescu or Orthanc not found (bash scripts/bootstrap.sh --dev)")
        return 2
    senders: list[Sender] = [
        migrator_store_sender(1, PDU),
        migrator_store_sender(4, PDU),
        migrator_run_sender(args.workers, PDU),
        storescu_sender(storescu, PDU),
    ]
    failed = False
    with tempfile.TemporaryDirectory(prefix="orthanc-bench-") as tmp:
        work = Path(tmp)
        root = args.corpus_dir or work / "corpora"
        corpus = prepare_corpus("tiny", args.files, root, args.seed, work / "subsets", args.files)
        ordered = sorted(p for p in corpus.full.dir.rglob("*") if p.is_file())
        peer_set = link_subset(ordered[: args.peer_files], work / "peer-subset")
        rows = {
            (s.name, r): Row(
                s.name, r, peer_set.files if s.name == PEER and r == "stock" else args.files
            )
            for s in senders
            for r in RECEIVERS
        }
        servers = {
            r: OrthancPeer(work / f"orthanc-{r}", nodelay=(r == "tuned"), verbose=False)
            for r in RECEIVERS
        }
        try:
            for server in servers.values():
                server.start()
            with Spawner() as spawner:
                for rep in range(args.repeat):
                    for r, server in servers.items():
                        for s in senders:
                            row = rows[(s.name, r)]
                            fileset = corpus.full if row.files == args.files else peer_set
                            scratch = work / f"scratch-{rep}-{r}-{s.name}"
                            scratch.mkdir()
                            argv = s.argv(fileset.dir, server.dicom_port, scratch)
                            label = f"[{rep + 1}/{args.repeat}] {r} Orthanc {s.name}"
                            if not timed_into_orthanc(
                                spawner, argv, server, row, label, args.timeout
                            ):
                                failed = True
        finally:
            for server in servers.values():
                server.stop()
    report(rows, senders, args)
    return 1 if failed else 0


def report(
    rows: dict[tuple[str, str], Row], senders: list[Sender], args: argparse.Namespace
) -> None:
    print(
        f"\nreceivers: Orthanc (Debian) stock and with TCP_NODELAY=1; {args.files} tiny files "
        f"(storescu into the stock one: {args.peer_files}); {args.repeat} repetitions, median"
    )
    print("\n| sender | Orthanc | files | files/s | stock ÷ tuned | × storescu |")
    print("|---|---|---:|---:|---:|---:|")
    out = []
    goals = []
    for s in senders:
        for r in RECEIVERS:
            row = rows[(s.name, r)]
            rate = row.rate
            tuned = rows[(s.name, "tuned")].rate
            peer = rows[(PEER, r)].rate
            ratio = rate / tuned if rate and tuned and r == "stock" else None
            vs_peer = rate / peer if rate and peer else None
            shown = f"{rate:,.0f}" if rate else "FAILED"
            print(
                f"| {s.label} | {r} | {row.files} | {shown} | "
                f"{f'{ratio:.2f}' if ratio else '–'} | {f'{vs_peer:.1f}' if vs_peer else '–'} |"
            )
            out.append(
                {
                    "sender": s.name,
                    "receiver": r,
                    "files": row.files,
                    "seconds": row.seconds,
                    "files_per_s": rate,
                    "failures": row.failures,
                }
            )
            if s.name != PEER and r == "stock":
                if ratio is not None:
                    goals.append((f"{s.label}: stock ÷ tuned Orthanc ≥ 0.9", ratio, ratio >= 0.9))
                if vs_peer is not None:
                    goals.append((f"{s.label}: ≥ 20× storescu (stock)", vs_peer, vs_peer >= 20))
    print_goals(goals, 16)
    if args.json:
        args.json.write_text(json.dumps({"rows": out, "goals": [list(g) for g in goals]}, indent=2))


if __name__ == "__main__":
    run_main(main)
