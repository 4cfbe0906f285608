"""STOW-RS against DIMSE C-STORE against Orthanc's own REST upload, into one Orthanc.

    .venv/bin/python bench/stow_bench.py                              # 500 tiny, 100 small
    .venv/bin/python bench/stow_bench.py --tiny 2000 --small 400 --repeat 3 --json /tmp/s.json

One Debian Orthanc with its DICOMweb plugin (``tests/peers/orthanc.py``, free ports,
``TCP_NODELAY=1`` so that its DIMSE side is not held back by Nagle) receives the same files,
interleaved within each repetition, from:

* ``migrator store --dicomweb`` (STOW-RS, ``-j`` keep-alive connections, up to 16
  instances per request);
* ``migrator store`` over DIMSE C-STORE (``-j`` associations);
* Orthanc's STOW-RS driven by ``curl`` (``curl-stow``): the same 16 instances per request,
  the multipart bodies built before the clock starts, ``-j`` keep-alive connections: what
  the server's STOW-RS path gives to a client that costs nothing, the ceiling of any
  STOW-RS client against this server;
* Orthanc's REST upload ``POST /instances`` (one file per request) driven by ``curl``:
  the files dealt round-robin into ``-j`` curl config files (each a list of transfers on
  one keep-alive connection, ``Expect:`` off so no 100-continue wait), run by
  ``xargs -P`` in parallel. One curl process per connection rather than per file: a
  process per file would measure fork/exec, not the upload.

Corpora: ``tiny`` (~10 KB) and ``small`` (~0.5 MB) from ``bench/corpora.py``.

Proof that a run sent every file: exit code 0 *and* Orthanc's own instance count equal to
the files sent (every instance is deleted before each run, so none is a no-op re-store).
files/s is files ÷ wall seconds of the whole command, process start included.

The goal of issue 19 is printed with "met" / "NOT met": STOW-RS ≥ 1.0× the best of the
others, on each corpus. Exit status: 0 every run stored every file; 1 a run failed; 2 the
bench could not run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.corpora import prepare_corpus
from bench.measure import SetupError, Spawner
from bench.receiver import AET, DEFAULT_PDU, HOST
from bench.rows import (
    Goal,
    Row,
    add_common_options,
    print_goals,
    run_main,
    timed_into_orthanc,
)
from bench.senders import migrator_command

# The Orthanc peer of the tests: free ports, a generated config, its identity checked.
from tests.peers.orthanc import ORTHANC_BINARY, OrthancPeer

STOW = "stow-rs"


@dataclass(frozen=True)
class Way:
    """One way of sending: ``command(folder, orthanc, jobs, scratch)`` is its command line."""

    name: str
    label: str
    command: Callable[[Path, OrthancPeer, int, Path], list[str]]


def stow(folder: Path, orthanc: OrthancPeer, jobs: int, scratch: Path) -> list[str]:
    args = ["store", "--dicomweb", orthanc.dicomweb_url, "--dir", str(folder), "-R"]
    return [*migrator_command(), *args, "-j", str(jobs)]


def dimse(folder: Path, orthanc: OrthancPeer, jobs: int, scratch: Path) -> list[str]:
    args = ["store", "--host", HOST, "--port", str(orthanc.dicom_port), "--called-ae", AET]
    args += ["--dir", str(folder), "-R", "-j", str(jobs), "--max-pdu", str(DEFAULT_PDU)]
    return [*migrator_command(), *args]


def curl(folder: Path, orthanc: OrthancPeer, jobs: int, scratch: Path) -> list[str]:
    """``xargs -P jobs`` running one ``curl -K`` per config file; each config lists its share
    of the files (dealt round-robin), one POST each, on one keep-alive connection. The
    configs are written here, before the clock starts (a user's ``find`` costs as little)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    # No more configs than files: an empty one is a curl run without a URL (an error).
    lists = [scratch / f"curl-{k}.cfg" for k in range(min(jobs, len(files)))]
    for k, cfg in enumerate(lists):
        # Each transfer its own block: ``next`` resets per-transfer options (headers, fail).
        blocks = [
            f'url = "{orthanc.url}/instances"\ndata-binary = "@{f}"\noutput = "/dev/null"\n'
            'header = "Content-Type: application/dicom"\nheader = "Expect:"\nfail\n'
            for f in files[k::jobs]
        ]
        # ``next`` between transfers only: one after the last is a transfer without a URL.
        cfg.write_text("next\n".join(blocks))
    index = scratch / "curl-configs.txt"
    index.write_text("".join(f"{cfg}\n" for cfg in lists))
    return ["xargs", "-a", str(index), "-P", str(jobs), "-n", "1", "curl", "-sS", "-K"]


def curl_stow(folder: Path, orthanc: OrthancPeer, jobs: int, scratch: Path) -> list[str]:
    """``xargs -P jobs`` of ``curl -K``: STOW-RS requests of 16 instances (bodies written
    here, before the clock), dealt round-robin over ``jobs`` keep-alive connections."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    boundary = "bench-stow-boundary-7f3a"
    bodies = []
    for n in range(0, len(files), STOW_BATCH):
        body = scratch / f"stow-{n // STOW_BATCH}.bin"
        with open(body, "wb") as out:
            for f in files[n : n + STOW_BATCH]:
                out.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
                out.write(f.read_bytes())
                out.write(b"\r\n")
            out.write(f"--{boundary}--\r\n".encode())
        bodies.append(body)
    kind = f'multipart/related; type=\\"application/dicom\\"; boundary={boundary}'
    lists = [scratch / f"curl-{k}.cfg" for k in range(min(jobs, len(bodies)))]
    for k, cfg in enumerate(lists):
        blocks = [
            f'url = "{orthanc.dicomweb_url}/studies"\ndata-binary = "@{b}"\n'
            f'output = "/dev/null"\nheader = "Content-Type: {kind}"\n'
            'header = "Accept: application/dicom+json"\nheader = "Expect:"\nfail\n'
            for b in bodies[k::jobs]
        ]
        cfg.write_text("next\n".join(blocks))
    index = scratch / "curl-configs.txt"
    index.write_text("".join(f"{cfg}\n" for cfg in lists))
    return ["xargs", "-a", str(index), "-P", str(jobs), "-n", "1", "curl", "-sS", "-K"]


#: Instances per STOW-RS request (migrator's default --stow-batch-files)
STOW_BATCH = 16

WAYS = (
    Way(STOW, "migrator store --dicomweb (STOW-RS)", stow),
    Way("curl-stow", "curl POST /dicom-web/studies (STOW-RS, 16 a request)", curl_stow),
    Way("dimse", "migrator store (DIMSE C-STORE)", dimse),
    Way("curl", "curl POST /instances (Orthanc REST)", curl),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tiny", type=int, default=500, help="tiny (~10 KB) files (default 500)")
    p.add_argument("--small", type=int, default=100, help="small (~0.5 MB) files (default 100)")
    p.add_argument("--repeat", type=int, default=2, help="repetitions; medians (default 2)")
    p.add_argument("-j", "--jobs", type=int, default=4, help="connections of each way (default 4)")
    add_common_options(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(ORTHANC_BINARY).exists():
        raise SetupError("Orthanc not found (bash scripts/bootstrap.sh --dev)")
    if shutil.which("curl") is None or shutil.which("xargs") is None:
        raise SetupError("curl and xargs are needed")
    counts = {"tiny": args.tiny, "small": args.small}
    failed = False
    with tempfile.TemporaryDirectory(prefix="stow-bench-") as tmp:
        work = Path(tmp)
        root = args.corpus_dir or work / "corpora"
        corpora = {
            size: prepare_corpus(size, n, root, args.seed, work / "subsets", n)
            for size, n in counts.items()
            if n > 0
        }
        rows = {(w.name, size): Row(w.name, size, counts[size]) for w in WAYS for size in corpora}
        with (
            OrthancPeer(work / "orthanc", dicomweb=True, verbose=False) as orthanc,
            Spawner() as spawner,
        ):
            for rep in range(args.repeat):
                for size, corpus in corpora.items():
                    for way in WAYS:
                        row = rows[(way.name, size)]
                        scratch = work / f"scratch-{rep}-{size}-{way.name}"
                        scratch.mkdir()
                        argv = way.command(corpus.full.dir, orthanc, args.jobs, scratch)
                        label = f"[{rep + 1}/{args.repeat}] {size} {way.label}"
                        if not timed_into_orthanc(spawner, argv, orthanc, row, label, args.timeout):
                            failed = True
        megabytes = {size: c.full.bytes / 1e6 for size, c in corpora.items()}
    report(rows, list(corpora), megabytes, args)
    return 1 if failed else 0


def report(
    rows: dict[tuple[str, str], Row],
    sizes: list[str],
    megabytes: dict[str, float],
    args: argparse.Namespace,
) -> None:
    print(
        f"\nreceiver: one Orthanc (Debian) with its DICOMweb plugin, TCP_NODELAY=1, emptied "
        f"before every run; -j {args.jobs} for each way; {args.repeat} repetitions, median"
    )
    print("\n| corpus | way | files | files/s | MB/s | × best other |")
    print("|---|---|---:|---:|---:|---:|")
    out = []
    goals: list[Goal] = []
    for size in sizes:
        for way in WAYS:
            row = rows[(way.name, size)]
            rate = row.rate
            others = [rows[(w.name, size)].rate for w in WAYS if w.name != way.name]
            best = max((r for r in others if r), default=None)
            ratio = rate / best if rate and best else None
            mb_s = rate * megabytes[size] / row.files if rate else None
            print(
                f"| {size}-{row.files} | {way.label} | {row.files} | "
                f"{f'{rate:,.0f}' if rate else 'FAILED'} | {f'{mb_s:,.1f}' if mb_s else '–'} | "
                f"{f'{ratio:.2f}' if ratio else '–'} |"
            )
            out.append(
                {
                    "way": way.name,
                    "corpus": size,
                    "files": row.files,
                    "seconds": row.seconds,
                    "files_per_s": rate,
                    "vs_best_other": ratio,
                    "failures": row.failures,
                }
            )
        # The issue's goal is against DIMSE and the REST upload; curl's STOW-RS is shown
        # as the server's own STOW-RS ceiling, not as a goal.
        ours = rows[(STOW, size)].rate
        issue_best = max((rows[(w, size)].rate or 0.0 for w in ("dimse", "curl")), default=0.0)
        if ours and issue_best:
            ratio = ours / issue_best
            goals.append((f"STOW-RS ≥ 1.0× DIMSE and the REST upload ({size})", ratio, ratio >= 1))
        ceiling = rows[("curl-stow", size)].rate
        if ours and ceiling:
            print(f"\n{size}: migrator's STOW-RS ÷ curl's STOW-RS = {ours / ceiling:.2f}")
    print_goals(goals, 19)
    if args.json:
        args.json.write_text(json.dumps({"rows": out, "goals": [list(g) for g in goals]}, indent=2))


if __name__ == "__main__":
    run_main(main)
