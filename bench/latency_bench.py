"""Throughput over distance: the same corpus, the same receiver, links 0 to 50 ms long.

    .venv/bin/python bench/latency_bench.py                       # 0 and 20 ms RTT, ~3 min
    .venv/bin/python bench/latency_bench.py --rtt-ms 0,5,20,50 --repeat 3 --json /tmp/lat.json
    .venv/bin/python bench/latency_bench.py --stock-receiver      # storescp without TCP_NODELAY

A DCMTK ``storescp --fork --ignore`` receives; ``bench/latency_relay.py`` (a user-space TCP
relay, in its own process) sits between every sender and it and delays each direction by
half the round trip (``--rtt-ms 0`` still goes through the relay, so the relay's own cost
is in every row; ``--direct`` adds a row without it). The senders, interleaved within each
repetition:

* ``migrator-run-auto``: ``migrator run -j auto --max-associations CAP`` (embedded Redis,
  ``--workers`` local workers, a fresh state directory per run);
* ``migrator-run``: ``migrator run`` with its default ``-j``;
* ``migrator-store-auto``: ``migrator store -j auto --max-associations CAP``;
* ``storescu``: DCMTK ``storescu``, one association. Above 0 ms it sends the first
  ``--peer-files`` files only (one file per round trip: 2,000 files 50 ms away take 100 s);
  its files/s is what is compared.

files/s is files ÷ wall seconds of the whole command (start-up included, as a user pays
it). The relay counts the connections open at once: the most seen during any
``-j auto`` run must stay ≤ CAP. Ratios: each sender against itself at the first
``--rtt-ms`` (normally 0), and against ``storescu`` at the same RTT. The goals of issue 16
(at 20 ms RTT: ``migrator-run-auto`` ≥ 0.8× its 0 ms files/s and ≥ 10× storescu, never
more than CAP associations) are printed with "met" / "NOT met".

Exit status: 0 every run stored every file; 1 a run failed (its output's tail is printed);
2 the bench could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpora import link_subset, prepare_corpus
from bench.latency_relay import LatencyRelay
from bench.measure import SetupError, Spawner, log, sender_env, tail
from bench.receiver import DEFAULT_PDU, Receiver, find_dcmtk_tool
from bench.rows import Row, add_common_options, print_goals, run_main
from bench.senders import (
    Sender,
    migrator_run_sender,
    migrator_store_sender,
    storescu_sender,
)

AUTO_RUN, DEFAULT_RUN, AUTO_STORE, PEER = (
    "migrator-run-auto",
    "migrator-run",
    "migrator-store-auto",
    "storescu",
)
SENDERS = (AUTO_RUN, DEFAULT_RUN, AUTO_STORE, PEER)
GOAL_RTT_MS = 20.0


def build(names: Sequence[str], cap: int, workers: int, pdu: int, storescu: str) -> list[Sender]:
    senders = []
    for name in names:
        if name == AUTO_RUN:
            s = migrator_run_sender(workers, pdu)
            s.template += ["-j", "auto", "--max-associations", str(cap)]
            s.name, s.label = AUTO_RUN, f"migrator run -j auto --max-associations {cap}"
        elif name == DEFAULT_RUN:
            s = migrator_run_sender(workers, pdu)
        elif name == AUTO_STORE:
            s = migrator_store_sender(1, pdu)
            s.template[s.template.index("-j") + 1] = "auto"
            s.template += ["--max-associations", str(cap)]
            s.name, s.label = AUTO_STORE, f"migrator store -j auto --max-associations {cap}"
        elif name == PEER:
            s = storescu_sender(storescu, pdu)
        else:
            raise SetupError(f"unknown sender {name!r} (known: {', '.join(SENDERS)})")
        senders.append(s)
    return senders


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rtt-ms", default="0,20", help="round trips to measure (default: 0,20)")
    p.add_argument("--direct", action="store_true", help="also a row without the relay")
    p.add_argument("--files", type=int, default=2000, help="tiny (~10 KB) files (default 2000)")
    p.add_argument("--peer-files", type=int, default=300, help="storescu's files above 0 ms")
    p.add_argument("--repeat", type=int, default=3, help="repetitions; medians (default 3)")
    p.add_argument("--senders", default=",".join(SENDERS), help="subset, in run order")
    p.add_argument("--max-associations", type=int, default=64, help="CAP (default 64)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="run's workers")
    p.add_argument("--mbit", type=float, default=None, help="cap each direction of the link")
    p.add_argument("--stock-receiver", action="store_true", help="storescp without TCP_NODELAY")
    add_common_options(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rtts = [x.strip() for x in args.rtt_ms.split(",") if x.strip()]
    keys = (["direct"] if args.direct else []) + rtts
    storescp = find_dcmtk_tool("storescp", args.dcmtk_dir)
    storescu = find_dcmtk_tool("storescu", args.dcmtk_dir)
    if storescp is None or storescu is None:
        print("DCMTK storescp/storescu not found (bash scripts/bootstrap.sh --dev)")
        return 2
    names = [n.strip() for n in args.senders.split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="latency-bench-") as tmp:
        work = Path(tmp)
        root = args.corpus_dir or work / "corpora"
        corpus = prepare_corpus("tiny", args.files, root, args.seed, work / "subsets", args.files)
        ordered = sorted(p for p in corpus.full.dir.rglob("*") if p.is_file())
        peer_set = link_subset(ordered[: args.peer_files], work / "peer-subset")
        senders = build(names, args.max_associations, args.workers, DEFAULT_PDU, storescu)
        rows = {
            (s.name, k): Row(
                s.name,
                k,
                peer_set.files if s.name == PEER and k not in ("0", "direct") else args.files,
            )
            for s in senders
            for k in keys
        }
        most_open: list[int] = []
        receiver = Receiver(storescp, work, DEFAULT_PDU, stock=args.stock_receiver)
        receiver.start()
        failed = False
        try:
            with Spawner() as spawner:
                for rep in range(args.repeat):
                    for key in keys:
                        relay = None
                        port = receiver.port
                        if key != "direct":
                            relay = LatencyRelay(receiver.port, float(key) / 2, args.mbit)
                            relay.__enter__()
                            port = relay.port
                        try:
                            for s in senders:
                                row = rows[(s.name, key)]
                                fileset = corpus.full if row.files == args.files else peer_set
                                scratch = work / f"scratch-{rep}-{key}-{s.name}"
                                scratch.mkdir()
                                res = spawner.run(
                                    s.argv(fileset.dir, port, scratch), sender_env(), args.timeout
                                )
                                stored, note = s.count(res, scratch, row.files)
                                label = f"[{rep + 1}/{args.repeat}] {key} ms {s.name}"
                                if res.rc == 0 and stored == row.files:
                                    row.seconds.append(res.seconds)
                                    log(f"{label}: {row.files / res.seconds:,.0f} files/s")
                                else:
                                    failed = True
                                    row.failures.append(f"rc {res.rc}, stored {stored}: {note}")
                                    log(f"{label}: FAILED rc {res.rc} {note}\n{tail(res.output)}")
                        finally:
                            if relay is not None:
                                relay.stop()
                                if relay.most_open is not None and any(
                                    s.name in (AUTO_RUN, AUTO_STORE) for s in senders
                                ):
                                    most_open.append(relay.most_open)
        finally:
            receiver.stop()
    report(rows, keys, senders, most_open, args)
    return 1 if failed else 0


def report(
    rows: dict[tuple[str, str], Row],
    keys: list[str],
    senders: list[Sender],
    most_open: list[int],
    args: argparse.Namespace,
) -> None:
    base = next((k for k in keys if k != "direct"), keys[0])
    tuned = "stock" if args.stock_receiver else "TCP_NODELAY=1"
    link = f", {args.mbit:g} Mbit/s each way" if args.mbit else ""
    print(
        f"\nreceiver: storescp --fork --ignore ({tuned}); {args.files} tiny files; "
        f"{args.repeat} repetitions, median; relay: bench/latency_relay.py{link}"
    )
    print("\n| sender | RTT ms | files | files/s | × itself at " + f"{base} ms | × storescu |")
    print("|---|---:|---:|---:|---:|---:|")
    out = []
    for s in senders:
        for k in keys:
            row = rows[(s.name, k)]
            rate, own = row.rate, rows[(s.name, base)].rate
            peer = rows.get((PEER, k))
            peer_rate = peer.rate if peer is not None else None
            vs_self = f"{rate / own:.2f}" if rate and own else "–"
            vs_peer = f"{rate / peer_rate:.1f}" if rate and peer_rate else "–"
            shown = f"{rate:,.0f}" if rate else "FAILED"
            print(f"| {s.label} | {k} | {row.files} | {shown} | {vs_self} | {vs_peer} |")
            out.append(
                {
                    "sender": s.name,
                    "rtt_ms": k,
                    "files": row.files,
                    "seconds": row.seconds,
                    "files_per_s": rate,
                    "failures": row.failures,
                }
            )
    if most_open:
        print(
            f"\nmost associations open at once through the relay (a -j auto run included): "
            f"{max(most_open)} (cap {args.max_associations})"
        )
    goals = []
    goal = f"{GOAL_RTT_MS:g}"
    auto_0, auto_20 = rows.get((AUTO_RUN, base)), rows.get((AUTO_RUN, goal))
    peer_20 = rows.get((PEER, goal))
    if auto_0 and auto_20 and auto_0.rate and auto_20.rate:
        r = auto_20.rate / auto_0.rate
        goals.append((f"run -j auto at {goal} ms RTT ≥ 0.8× its {base} ms files/s", r, r >= 0.8))
        if peer_20 and peer_20.rate:
            r = auto_20.rate / peer_20.rate
            goals.append((f"run -j auto at {goal} ms RTT ≥ 10× storescu", r, r >= 10))
    if most_open:
        goals.append(
            (
                "never more associations than --max-associations",
                max(most_open),
                max(most_open) <= args.max_associations,
            )
        )
    print_goals(goals, 16)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"rows": out, "most_open": most_open, "goals": [list(g) for g in goals]}, indent=2
            )
        )


if __name__ == "__main__":
    run_main(main)
