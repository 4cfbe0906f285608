#!/usr/bin/env python3
"""PACS to PACS (issue 17): ``migrator run dimse://`` against DCMTK's retrieve-and-send pipelines.

    .venv/bin/python bench/pacs_bench.py --help
    .venv/bin/python bench/pacs_bench.py --repeat 3 --json /tmp/pacs.json     # 300 / 3,000
    .venv/bin/python bench/pacs_bench.py --studies 5 --instances 20 --repeat 1 --dest storescp

One Debian Orthanc is the old PACS (``tests/peers/orthanc.py``, free ports, ``TCP_NODELAY=1``):
it knows our calling AE titles and the two move destinations (``DicomModalities``) and allows
C-GET (``DicomAlwaysAllowGet``). The corpus, ``--studies`` studies holding ``--instances``
instances (default 300 / 3,000, tiny ~10 KB images, 2 series a study), is uploaded into it
once by its REST API. Study k is one of five kinds, each SOP class in its own transfer
syntax: Secondary Capture in explicit VR little endian, CT in implicit VR little endian, MR in
explicit VR big endian, CR in RLE Lossless, DX in deflated explicit VR little endian (no
JPEG 2000: see SLICES).

Each repetition runs four rows, in the order below on odd repetitions and reversed on even
ones, each into an emptied destination (``--dest orthanc``: a second Orthanc, every
instance deleted before each run; ``--dest storescp``: DCMTK ``storescp --fork +xa``
writing into an emptied folder). The clock of a row runs from nothing to everything at
the destination:

* ``migrator-get``: ``migrator run dimse://OLDPACS@… --retrieve get`` (listing by C-FIND,
  C-GET per series, C-STORE to the destination; embedded Redis, ``--workers`` local workers,
  a fresh ``--state-dir``);
* ``migrator-move``: the same with ``--retrieve move --move-ae MIGRATOR-MOVE --move-port P``
  (the old PACS sends to migrator's own Storage SCP);
* ``dcmtk-get``: ``findscu -X`` (the study list, one query file per study) + ``getscu``
  (study-level C-GET of every study, one association, into a folder) + ``dcmsend`` of the
  folder;
* ``dcmtk-move``: ``findscu -X`` + ``movescu`` (study-level C-MOVE of every study to a
  DCMTK ``storescp +xa`` writing into a folder, started before the clock) + ``dcmsend``.

A DCMTK row's time is the sum of its steps' wall times (each process's start included).
Proof that a row moved everything: exit code 0 of every process; the destination's SOP
Instance UID set equal to the source's (count and set); for migrator, its ``--report``:
``planned = stored + failed + skipped`` with ``stored`` = the corpus, nothing failed or
skipped, and a job started after the launch (not resumed); for DCMTK, one query file per
study, every instance in the intermediate folder and dcmsend's ``+crf`` report saying
``SUCCESS`` for every one (dcmsend exits 0 after refused stores).

Printed: one table (files/s per row, ``× best DCMTK``: files/s ÷ files/s of the faster
DCMTK pipeline in the same invocation) and the goal of issue 17 (each migrator row ≥ 1.0×).
Exit status: 0 every row moved every instance in every repetition; 1 a row failed; 2 the
bench could not run (no Orthanc, no DCMTK, the corpus could not be uploaded).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from bench.measure import ProcResult, SetupError, Spawner, log, stop_group, tail
from bench.rows import Goal, add_common_options, empty_orthanc, print_goals, run_main
from bench.scp_bench import repo_env
from bench.senders import REPORT_NAME, dcmsend_count, migrator_command, run_count

# The Orthanc peer of the tests: free ports, a generated config, its identity checked.
from tests.peers.orthanc import (
    ORTHANC_BINARY,
    OrthancPeer,
    free_port_all_interfaces,
)

HOST = "127.0.0.1"
SOURCE_AE = "OLDPACS"
DEST_AE = "NEWPACS"
OUR_AE = "MIGRATOR"  # migrator's calling AE towards the old PACS
MOVE_AE = "MIGRATOR-MOVE"  # migrator's own Storage SCP, the C-MOVE destination
PEER_AE = "DCMTKSCU"  # findscu / getscu / movescu
PEER_MOVE_AE = "DCMTK-STORESCP"  # the storescp that movescu moves to
#: The largest PDU DCMTK accepts, for every DCMTK receiver and sender (migrator: its default).
PDU = 131072
ROWS = ("migrator-get", "migrator-move", "dcmtk-get", "dcmtk-move")
DCMTK_ROWS = ("dcmtk-get", "dcmtk-move")
LABELS = {
    "migrator-get": "migrator run --retrieve get",
    "migrator-move": "migrator run --retrieve move",
    "dcmtk-get": "findscu + getscu + dcmsend",
    "dcmtk-move": "findscu + movescu + storescp + dcmsend",
}
#: (kind, transfer syntax) of study k: k modulo 5. Each SOP class in its own syntax. No JPEG
#: 2000: getscu proposes it (+xv) in one context with the uncompressed syntaxes, Orthanc
#: 1.10.1 accepts an uncompressed one there and cannot convert JPEG 2000 to it ("C-GET SCP:
#: Cannot transcode"), so that pipeline could never bring those instances.
SLICES = (
    ("SC", "1.2.840.10008.1.2.1"),  # explicit VR little endian
    ("CT", "1.2.840.10008.1.2"),  # implicit VR little endian
    ("MR", "1.2.840.10008.1.2.2"),  # explicit VR big endian
    ("CR", "1.2.840.10008.1.2.5"),  # RLE Lossless
    ("DX", "1.2.840.10008.1.2.1.99"),  # deflated explicit VR little endian
)
DCMTK_TOOLS = ("findscu", "getscu", "movescu", "storescp", "dcmsend")


# --------------------------------------------------------------------------------------------
# The corpus and the old PACS


@dataclass
class Corpus:
    dirs: list[Path]
    studies: int
    sop_uids: set[str]
    bytes: int

    @property
    def files(self) -> int:
        return len(self.sop_uids)

    def paths(self) -> list[Path]:
        return sorted(p for d in self.dirs for p in d.rglob("*.dcm"))


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible, the larger shares first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def make_corpus(root: Path, studies: int, instances: int, seed: int) -> Corpus:
    """Write (or reuse: ``write_corpus`` is deterministic) one sub-corpus per slice."""
    import pydicom

    from migrator.synth import write_corpus

    per_slice_studies = split(studies, len(SLICES))
    # Instances follow the studies: each slice gets its studies' share of the instances.
    per_study = split(instances, studies)
    dirs: list[Path] = []
    start = 0
    for (kind, syntax), n_studies in zip(SLICES, per_slice_studies, strict=True):
        if n_studies == 0:
            continue
        count = sum(per_study[start : start + n_studies])
        start += n_studies
        d = root / f"{kind}-{syntax}-{n_studies}x-{count}-seed{seed}"
        have = len(list(d.glob("*.dcm"))) if d.is_dir() else -1
        if have != count:
            t0 = time.perf_counter()
            write_corpus(
                d, count=count, size="tiny", kind=kind, studies=n_studies, seed=seed,
                transfer_syntax=syntax,
            )  # fmt: skip
            log(f"generated {count} {kind} files ({syntax}) in {time.perf_counter() - t0:.1f} s")
        dirs.append(d)
    corpus = Corpus(dirs, studies, set(), 0)
    for p in corpus.paths():
        corpus.sop_uids.add(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID))
        corpus.bytes += p.stat().st_size
    if corpus.files != instances:
        raise SetupError(f"the corpus holds {corpus.files} distinct instances, not {instances}")
    return corpus


def upload(pacs: OrthancPeer, paths: Sequence[Path], threads: int = 4) -> None:
    """REST ``POST /instances``, ``threads`` keep-alive connections in parallel."""
    sessions: dict[int, requests.Session] = {}

    def one(path: Path) -> None:
        import threading

        session = sessions.setdefault(threading.get_ident(), requests.Session())
        r = session.post(f"{pacs.url}/instances", data=path.read_bytes(), timeout=120)
        if r.status_code != 200:
            raise SetupError(f"uploading {path} into the old PACS: HTTP {r.status_code} {r.text}")

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, paths))
    for s in sessions.values():
        s.close()
    log(f"uploaded {len(paths)} files into the old PACS in {time.perf_counter() - t0:.1f} s")


def old_pacs(workdir: Path, move_port: int, peer_move_port: int) -> OrthancPeer:
    return OrthancPeer(
        workdir,
        aet=SOURCE_AE,
        verbose=False,
        extra={
            "DicomModalities": {
                OUR_AE: [OUR_AE, HOST, 1],
                MOVE_AE: [MOVE_AE, HOST, move_port],
                PEER_AE: [PEER_AE, HOST, 1],
                PEER_MOVE_AE: [PEER_MOVE_AE, HOST, peer_move_port],
            },
            "DicomAlwaysAllowGet": True,
        },
    )


# --------------------------------------------------------------------------------------------
# Destinations and the storescp that movescu moves to


class StoreScp:
    """``storescp [--fork] +xa -pdu 131072 -aet AE -od DIR PORT``: every syntax accepted,
    every file written (the set is read back from the files)."""

    def __init__(self, storescp: str, aet: str, out: Path, port: int, fork: bool) -> None:
        self.storescp, self.aet, self.out, self.port, self.fork = storescp, aet, out, port, fork
        self.log_path = out.parent / f"{out.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreScp:
        self.out.mkdir(parents=True, exist_ok=True)
        argv = [self.storescp, *(["--fork"] if self.fork else []), "+xa", "-pdu", str(PDU)]
        argv += ["-aet", self.aet, "-od", str(self.out), str(self.port)]
        with open(self.log_path, "wb") as out:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=repo_env(),
                start_new_session=True,
            )
        time.sleep(0.3)  # a bind failure makes storescp exit at once (TESTING.md §1.1)
        if self._proc.poll() is not None:
            text = self.log_path.read_text("utf-8", "replace")
            raise SetupError(f"storescp on port {self.port} did not start:\n{tail(text)}")
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_group(proc)


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]


def sop_uids_of_files(folder: Path) -> set[str]:
    import pydicom

    return {
        str(pydicom.dcmread(p, stop_before_pixels=True, force=True).SOPInstanceUID)
        for p in files_in(folder)
    }


class Destination:
    name = ""
    aet = DEST_AE
    port = 0

    def empty(self) -> None: ...
    def sop_uids(self) -> set[str]: ...
    def stop(self) -> None: ...


class OrthancDestination(Destination):
    name = "orthanc"

    def __init__(self, work: Path) -> None:
        self.peer = OrthancPeer(work / "dest-orthanc", aet=DEST_AE, verbose=False).start()
        self.port = self.peer.dicom_port

    def empty(self) -> None:
        empty_orthanc(self.peer)
        if self.peer.count_instances():
            raise SetupError("the destination Orthanc still holds instances after emptying")

    def sop_uids(self) -> set[str]:
        return self.peer.all_sop_instance_uids()

    def stop(self) -> None:
        self.peer.stop()


class StoreScpDestination(Destination):
    name = "storescp"

    def __init__(self, storescp: str, work: Path) -> None:
        from migrator.netutil import free_port

        self.scp = StoreScp(storescp, DEST_AE, work / "dest-storescp", free_port(HOST), True)
        self.scp.start()
        self.port = self.scp.port

    def empty(self) -> None:
        for p in files_in(self.scp.out):
            p.unlink()

    def sop_uids(self) -> set[str]:
        return sop_uids_of_files(self.scp.out)

    def stop(self) -> None:
        self.scp.stop()


# --------------------------------------------------------------------------------------------
# One run of one row


@dataclass
class Run:
    rep: int
    seconds: float
    ok: bool
    problems: list[str]
    at_destination: int
    missing: int
    extra: int
    steps: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] | None = None


@dataclass
class Row:
    name: str
    files: int
    runs: list[Run] = field(default_factory=list)

    @property
    def ok_seconds(self) -> list[float]:
        return [r.seconds for r in self.runs if r.ok]

    @property
    def complete(self) -> bool:
        return bool(self.runs) and all(r.ok for r in self.runs)

    @property
    def rate(self) -> float | None:
        s = self.ok_seconds
        return self.files / statistics.median(s) if s and self.complete else None


@dataclass
class Context:
    spawner: Spawner
    tools: dict[str, str]
    pacs: OrthancPeer
    dest: Destination
    corpus: Corpus
    args: argparse.Namespace
    move_port: int
    peer_move_port: int

    @property
    def source_uri(self) -> str:
        return f"dimse://{SOURCE_AE}@{HOST}:{self.pacs.dicom_port}"


Step = tuple[str, Callable[[], list[str]]]


def migrator_steps(ctx: Context, scratch: Path, mode: str) -> list[Step]:
    argv = [*migrator_command(), "run", ctx.source_uri, "--source-calling-ae", OUR_AE]
    argv += ["--retrieve", mode]
    if mode == "move":
        argv += ["--move-ae", MOVE_AE, "--move-port", str(ctx.move_port)]
    argv += ["--host", HOST, "--port", str(ctx.dest.port), "--called-ae", ctx.dest.aet]
    argv += ["--state-dir", str(scratch / "state"), "--workers", str(ctx.args.workers)]
    argv += ["-q", "--report", str(scratch / REPORT_NAME)]
    return [("migrator run", lambda: argv)]


def dcmtk_steps(ctx: Context, scratch: Path, mode: str) -> list[Step]:
    t = ctx.tools
    queries, folder = scratch / "queries", scratch / "folder"
    queries.mkdir()
    folder.mkdir()
    peer = [HOST, str(ctx.pacs.dicom_port)]
    find = [t["findscu"], "-S", "-aet", PEER_AE, "-aec", SOURCE_AE]
    find += ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-X", "-od", str(queries)]

    def query_files() -> list[str]:
        return [str(p) for p in sorted(queries.glob("rsp*.dcm"))]

    study_level = ["-S", "-aet", PEER_AE, "-aec", SOURCE_AE, "-k", "QueryRetrieveLevel=STUDY"]
    if mode == "get":
        # getscu proposes the uncompressed syntaxes for every storage class: the old PACS
        # converts RLE and deflated instances to one of them (see SLICES).
        get = [t["getscu"], *study_level, "-pdu", str(PDU), "-od", str(folder)]
        retrieve: Step = ("getscu", lambda: [*get, *peer, *query_files()])
    else:
        move = [t["movescu"], *study_level, "-aem", PEER_MOVE_AE]
        retrieve = ("movescu", lambda: [*move, *peer, *query_files()])
    send = [t["dcmsend"], "-aec", ctx.dest.aet, "--scan-directories", "--recurse"]
    send += ["-pdu", str(PDU), "+crf", str(scratch / "dcmsend-report.txt")]
    send += [HOST, str(ctx.dest.port), str(folder)]
    return [("findscu", lambda: [*find, *peer]), retrieve, ("dcmsend", lambda: send)]


def run_row(ctx: Context, name: str, rep: int, scratch: Path) -> Run:
    """One timed run of ``name`` into the emptied destination, and its proof."""
    ctx.dest.empty()
    scratch.mkdir(parents=True)
    mode = name.rsplit("-", 1)[1]
    migrator = name.startswith("migrator")
    steps = migrator_steps(ctx, scratch, mode) if migrator else dcmtk_steps(ctx, scratch, mode)
    mover: StoreScp | None = None
    if name == "dcmtk-move":  # listening before the clock starts, as an SCP would be
        mover = StoreScp(
            ctx.tools["storescp"], PEER_MOVE_AE, scratch / "folder", ctx.peer_move_port, False
        ).start()
    problems: list[str] = []
    seconds = 0.0
    step_log: list[dict[str, Any]] = []
    results: dict[str, ProcResult] = {}
    try:
        for step, argv in steps:
            res = ctx.spawner.run(argv(), repo_env(), ctx.args.timeout)
            seconds += res.seconds
            results[step] = res
            step_log.append({"step": step, "seconds": res.seconds, "rc": res.rc})
            if step == "getscu" and res.rc == -signal.SIGSEGV:
                # DCMTK 3.6.7's getscu crashes after the last C-GET of two or more query
                # files (seen every time, before releasing the association); the folder's
                # count below and dcmsend's report still prove what it brought.
                step_log[-1]["crashed"] = "SIGSEGV after its last C-GET"
            elif res.rc != 0:
                what = "timed out" if res.rc is None else f"exit {res.rc}"
                problems.append(f"{step} {what}: {tail(res.output, 8)}")
                break
            if step == "findscu":
                found = len(list((scratch / "queries").glob("rsp*.dcm")))
                step_log[-1]["studies"] = found
                if found != ctx.corpus.studies:
                    problems.append(f"findscu listed {found} of {ctx.corpus.studies} studies")
            if step in ("getscu", "movescu"):
                got = len(files_in(scratch / "folder"))
                step_log[-1]["files"] = got
                if got != ctx.corpus.files:
                    problems.append(f"{step} brought {got} of {ctx.corpus.files} instances")
    finally:
        if mover is not None:
            mover.stop()
    totals = None
    if migrator and "migrator run" in results:
        stored, note = run_count(results["migrator run"], scratch, ctx.corpus.files)
        totals = report_totals(scratch)
        if note:
            problems.append(f"report: {note}")
        if stored != ctx.corpus.files:
            problems.append(f"report: stored {stored} of {ctx.corpus.files}")
        if totals is not None:
            parts = sum(int(totals.get(k) or 0) for k in ("stored", "failed", "skipped"))
            if totals.get("planned") != parts:
                problems.append(f"invariant broken: planned {totals.get('planned')} != {parts}")
    if "dcmsend" in results:
        sent, note = dcmsend_count(results["dcmsend"], scratch, ctx.corpus.files)
        if sent != ctx.corpus.files:
            problems.append(f"dcmsend stored {sent} of {ctx.corpus.files} ({note})".rstrip(" ()"))
    at_dest = ctx.dest.sop_uids()
    missing, extra = ctx.corpus.sop_uids - at_dest, at_dest - ctx.corpus.sop_uids
    if missing or extra:
        problems.append(
            f"the destination holds {len(at_dest)} instances: {len(missing)} of the source's "
            f"missing, {len(extra)} not the source's"
        )
    return Run(rep, seconds, not problems, problems, len(at_dest), len(missing), len(extra),
               step_log, totals)  # fmt: skip


def report_totals(scratch: Path) -> dict[str, Any] | None:
    try:
        totals = json.loads((scratch / REPORT_NAME).read_text("utf-8")).get("totals")
    except (OSError, ValueError):
        return None
    return totals if isinstance(totals, dict) else None


# --------------------------------------------------------------------------------------------
# Options, the loop, the table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--studies", type=int, default=300, help="studies (default 300)")
    p.add_argument("--instances", type=int, default=3000, help="instances (default 3000)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions; medians (default 3)")
    p.add_argument(
        "--dest",
        choices=("orthanc", "storescp"),
        default="orthanc",
        help="the destination: a second Orthanc (default) or DCMTK storescp writing files; "
        "e.g. --dest storescp",
    )
    p.add_argument("--workers", type=int, default=2, help="migrator run --workers (default 2)")
    p.add_argument(
        "--rows",
        default=",".join(ROWS),
        help=f"subset and order of {','.join(ROWS)} (default all), e.g. --rows migrator-get,"
        "dcmtk-get",
    )
    add_common_options(p)
    p.set_defaults(timeout=1800)
    args = p.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        p.error(f"--rows: unknown {', '.join(unknown) or '(none)'}; choose from {','.join(ROWS)}")
    if args.studies < 1 or args.instances < args.studies:
        p.error("--instances must be at least --studies, and --studies at least 1")
    args.rows = rows
    return args


def find_tools(dcmtk_dir: Path | None) -> dict[str, str]:
    from bench.receiver import find_dcmtk_tool

    tools = {name: find_dcmtk_tool(name, dcmtk_dir) for name in DCMTK_TOOLS}
    missing = [n for n, path in tools.items() if path is None]
    if missing:
        raise SetupError(f"DCMTK {', '.join(missing)} not found (apt-get install dcmtk)")
    if not os.access(ORTHANC_BINARY, os.X_OK):
        raise SetupError(f"Orthanc not found at {ORTHANC_BINARY} (apt-get install orthanc)")
    return {n: str(p) for n, p in tools.items()}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tools = find_tools(args.dcmtk_dir)
    rows = {name: Row(name, args.instances) for name in args.rows}
    with tempfile.TemporaryDirectory(prefix="pacs-bench-") as tmp:
        work = Path(tmp)
        corpus = make_corpus(args.corpus_dir or work / "corpora", args.studies, args.instances,
                             args.seed)  # fmt: skip
        move_port, peer_move_port = free_port_all_interfaces(), free_port_all_interfaces()
        pacs = old_pacs(work / "old-pacs", move_port, peer_move_port)
        dest: Destination | None = None
        try:
            pacs.start()
            upload(pacs, corpus.paths())
            if pacs.all_sop_instance_uids() != corpus.sop_uids:
                raise SetupError("the old PACS does not hold exactly the corpus after the upload")
            dest = (
                OrthancDestination(work)
                if args.dest == "orthanc"
                else StoreScpDestination(tools["storescp"], work)
            )
            with Spawner() as spawner:
                ctx = Context(spawner, tools, pacs, dest, corpus, args, move_port, peer_move_port)
                for rep in range(args.repeat):
                    order = args.rows if rep % 2 == 0 else args.rows[::-1]
                    for name in order:
                        label = f"[{rep + 1}/{args.repeat}] {LABELS[name]}"
                        run = run_row(ctx, name, rep, work / f"scratch-{rep}-{name}")
                        rows[name].runs.append(run)
                        if run.ok:
                            log(f"{label}: {args.instances / run.seconds:,.1f} files/s, complete")
                        else:
                            log(f"{label}: FAILED: " + "; ".join(run.problems))
        finally:
            if dest is not None:
                dest.stop()
            pacs.stop()
    return report(rows, corpus, args)


def report(rows: dict[str, Row], corpus: Corpus, args: argparse.Namespace) -> int:
    best = max((rows[n] for n in DCMTK_ROWS if n in rows and rows[n].rate), default=None,
               key=lambda r: r.rate or 0.0)  # fmt: skip
    print(
        f"\nold PACS: Orthanc; destination: {args.dest}; {corpus.studies} studies, "
        f"{corpus.files} instances, {corpus.bytes / 1e6:.1f} MB, 5 SOP classes in 5 transfer "
        f"syntaxes; {args.repeat} repetitions (order alternating), median"
    )
    print("\n| row | files | s (median) | files/s | × best DCMTK | complete runs |")
    print("|---|---:|---:|---:|---:|---:|")
    goals: list[Goal] = []
    out = []
    for name, row in rows.items():
        rate = row.rate
        ratio = rate / best.rate if rate and best is not None and best.rate else None
        median = statistics.median(row.ok_seconds) if row.ok_seconds else None
        shown = f"{rate:,.1f}" if rate else "FAILED"
        print(
            f"| {LABELS[name]} | {row.files} | {f'{median:.1f}' if median else '–'} | {shown} | "
            f"{f'{ratio:.2f}' if ratio is not None else '–'} | "
            f"{sum(r.ok for r in row.runs)}/{len(row.runs)} |"
        )
        if name.startswith("migrator") and ratio is not None:
            goals.append((f"{LABELS[name]} ≥ 1.0× the best DCMTK pipeline", ratio, ratio >= 1.0))
        out.append(
            {
                "row": name,
                "label": LABELS[name],
                "files": row.files,
                "seconds": [r.seconds for r in row.runs],
                "files_per_s": rate,
                "x_best_dcmtk": ratio,
                "complete": row.complete,
                "runs": [vars(r) for r in row.runs],
            }
        )
    if best is not None:
        print(f"\nbest DCMTK pipeline: {LABELS[best.name]}")
    print_goals(goals, 17)
    failed = [n for n, r in rows.items() if not r.complete]
    for name in failed:
        for r in rows[name].runs:
            if not r.ok:
                print(f"\n{LABELS[name]}, repetition {r.rep + 1}: " + "; ".join(r.problems))
    if args.json:
        doc = {
            "ok": not failed,
            "dest": args.dest,
            "corpus": {"studies": corpus.studies, "files": corpus.files, "bytes": corpus.bytes},
            "repeat": args.repeat,
            "workers": args.workers,
            "rows": out,
            "best_dcmtk": best.name if best else None,
            "goals": [list(g) for g in goals],
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        }
        args.json.write_text(json.dumps(doc, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
