#!/usr/bin/env python3
"""C-STORE throughput of ``migrator store`` against peer senders, in one invocation.

Every sender sends the same synthetic corpus to the same DCMTK ``storescp --fork --ignore``
receiver on loopback, and the runs are interleaved per repetition (A, B, C, A, B, C, ...) so
that the noise of a shared machine lands on all senders alike. The numbers to quote are the
ratios printed next to each sender, not the absolute rates (see bench/README.md).

Run it with the project's virtualenv::

    .venv/bin/python bench/store_bench.py --help

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
import re
import shutil
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

HOST = "127.0.0.1"
AET = "STORESCP"
DEFAULT_PDU = 131072  # the largest PDU DCMTK accepts; the receiver's value sets the send size
DEFAULT_CORPORA = ("tiny:2000", "small:400")
SIZES = ("tiny", "small", "medium", "large")
ALL_SENDERS = ("migrator-j1", "migrator-j4", "storescu", "dcmsend", "pynetdicom")
PROBE_NAME = "probe-1"

# storescp has no identity to query: a bind failure makes it exit at once, so still running
# this long after start means it holds the port (TESTING.md §1.1).
_BIND_GRACE_S = 0.3
# Exit codes of this script.
EXIT_OK, EXIT_SENDER_FAILED, EXIT_SETUP = 0, 1, 2


class SetupError(RuntimeError):
    """The bench cannot run at all (receiver, corpus or a required tool)."""


# --------------------------------------------------------------------------------------------
# Processes


@dataclass
class ProcResult:
    rc: int | None  # None: killed after the timeout
    seconds: float
    output: str  # stdout and stderr merged


def _kill_group(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Signal the process group we created for ``proc`` (it and its children, nothing else)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def run_timed(argv: Sequence[str], env: dict[str, str], timeout: float) -> ProcResult:
    """Run ``argv`` to completion and return its wall-clock time.

    The clock covers process start-up too: that is what a user of each tool pays per
    invocation, and the start-up probe table shows how much of it there is. Each run gets its
    own session so a timeout can kill the sender together with any children it forked.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        rc = None
    except BaseException:  # Ctrl-C or SIGTERM: leave no sender running behind us
        _kill_group(proc)
        proc.wait()
        raise
    seconds = time.perf_counter() - t0
    return ProcResult(rc, seconds, out.decode("utf-8", "replace"))


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def sender_env() -> dict[str, str]:
    """The environment of every sender and the receiver.

    ``TCP_NODELAY=1`` makes DCMTK disable Nagle's algorithm (TESTING.md §1.2: otherwise 40–90 ms
    per C-STORE on loopback); the Python senders ignore it. ``MIGRATOR_*`` variables are
    dropped because ``migrator store`` reads its options from them (a stray
    ``MIGRATOR_RATE_LIMIT`` would silently throttle it).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env["TCP_NODELAY"] = "1"
    return env


def _version_line(binary: str | Path) -> str | None:
    try:
        proc = subprocess.run(
            [str(binary), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (proc.stdout + proc.stderr).strip()
    return text.splitlines()[0].strip() if text else None


def find_dcmtk_tool(name: str, extra_dir: str | Path | None = None) -> str | None:
    """The first ``name`` on PATH (or in ``extra_dir``) that is DCMTK's.

    pynetdicom installs ``storescu``/``storescp`` scripts of its own into the venv's bin, which
    come first on PATH in an activated venv; they are told apart by ``--version``, which for
    DCMTK reads ``$dcmtk: storescu v3.6.7 ...``.
    """
    dirs = [str(extra_dir)] if extra_dir else []
    dirs += os.environ.get("PATH", "").split(os.pathsep)
    dirs += ["/usr/bin", "/usr/local/bin"]
    seen: set[Path] = set()
    for d in dirs:
        if not d:
            continue
        candidate = Path(d) / name
        if candidate in seen or not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        seen.add(candidate)
        line = _version_line(candidate)
        if line and "dcmtk" in line.lower():
            return str(candidate)
    return None


def migrator_command() -> list[str]:
    """``migrator`` from the same environment as this interpreter (not whatever PATH finds)."""
    script = Path(sys.executable).parent / "migrator"  # no resolve(): keep the venv's bin
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "migrator"]


# --------------------------------------------------------------------------------------------
# Receiver


class Receiver:
    """``storescp --fork --ignore -pdu N -aet STORESCP PORT`` with ``TCP_NODELAY=1``.

    ``--ignore`` receives each dataset completely but does not write it, so disk speed stays out
    of the comparison; ``--fork`` gives each association its own process, so ``-j 4`` does not
    queue behind one accept loop.
    """

    def __init__(self, storescp: str, workdir: Path, pdu: int) -> None:
        self.storescp = storescp
        self.log_path = workdir / "storescp.log"
        self.pdu = pdu
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, attempts: int = 3) -> None:
        from migrator.netutil import free_port

        last = ""
        for _ in range(attempts):
            # Another process can take the port between free_port() and the bind: retry then.
            self.port = free_port(HOST)
            argv = [self.storescp, "--fork", "--ignore", "-pdu", str(self.pdu), "-aet", AET]
            with open(self.log_path, "wb") as log:
                self._proc = subprocess.Popen(
                    [*argv, str(self.port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=sender_env(),
                    start_new_session=True,  # its forked children share the group we kill
                )
            time.sleep(_BIND_GRACE_S)
            if self._proc.poll() is None:
                return
            last = self.log()
            self._proc = None
            if "Address already in use" not in last:
                break
        raise SetupError(f"storescp did not start on port {self.port}:\n{tail(last)}")

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)
            proc.wait()
        # Children that were mid-association get the same treatment.
        _kill_group(proc, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# Corpora


@dataclass
class FileSet:
    dir: Path
    files: int
    bytes: int


@dataclass
class Corpus:
    name: str
    size: str
    full: FileSet
    subset: FileSet  # what pynetdicom sends (capped: it runs at tens of files/s)


def _scan(directory: Path) -> FileSet:
    files = [p for p in directory.rglob("*") if p.is_file()]
    return FileSet(directory, len(files), sum(p.stat().st_size for p in files))


def _link_subset(src_files: Sequence[Path], dest: Path) -> FileSet:
    """Hard links (copies across file systems) of ``src_files`` in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in src_files:
        target = dest / f.name
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
    return _scan(dest)


def parse_corpus_spec(spec: str) -> tuple[str, int]:
    size, sep, count = spec.partition(":")
    if not sep or size not in SIZES or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(
            f"bad corpus {spec!r}: expected SIZE:COUNT with SIZE one of {', '.join(SIZES)}"
        )
    return size, int(count)


def prepare_corpus(
    size: str, count: int, root: Path, seed: int, subset_root: Path, subset_max: int
) -> Corpus:
    """Generate (or reuse) ``count`` files of ``size`` under ``root`` and a capped subset.

    ``write_corpus`` is deterministic (same seed, same bytes), so a directory that already
    holds exactly ``count`` files from an earlier ``--corpus-dir`` run is reused as is.
    """
    from migrator.synth import write_corpus

    name = f"{size}-{count}"
    directory = root / f"{name}-seed{seed}"
    existing = _scan(directory) if directory.is_dir() else None
    if existing is None or existing.files != count:
        t0 = time.perf_counter()
        write_corpus(directory, count=count, size=size, seed=seed)
        log(f"generated {name} in {time.perf_counter() - t0:.1f} s: {directory}")
    else:
        log(f"reusing {name}: {directory}")
    full = _scan(directory)
    if full.files != count:
        raise SetupError(f"{directory} holds {full.files} files, expected {count}")
    ordered = sorted(p for p in directory.rglob("*") if p.is_file())
    subset = _link_subset(ordered[:subset_max], subset_root / name)
    return Corpus(name, size, full, subset)


def warm_page_cache(fileset: FileSet) -> None:
    """Read every file once so the first sender does not pay for cold reads."""
    for p in fileset.dir.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                while fh.read(1 << 20):
                    pass


# --------------------------------------------------------------------------------------------
# Senders


@dataclass
class Sender:
    name: str
    label: str
    # Command line; "{dir}", "{port}" and "{scratch}" are filled in per run.
    template: list[str]
    # (process result, scratch dir, files expected) -> (files stored or None, note)
    count: Callable[[ProcResult, Path, int], tuple[int | None, str]]
    count_method: str
    uses_subset: bool = False

    def argv(self, directory: Path, port: int, scratch: Path) -> list[str]:
        values = {"{dir}": str(directory), "{port}": str(port), "{scratch}": str(scratch)}
        out = []
        for arg in self.template:
            for key, value in values.items():
                arg = arg.replace(key, value)
            out.append(arg)
        return out


def _migrator_count(res: ProcResult, _scratch: Path, _expected: int) -> tuple[int | None, str]:
    ok = re.search(r"Successful:\s+(\d+)", res.output)
    failed = re.search(r"Failed:\s+(\d+)", res.output)
    if ok is None or failed is None:
        return None, "no 'Successful:'/'Failed:' lines in the summary"
    if int(failed.group(1)):
        return int(ok.group(1)), f"{failed.group(1)} failed"
    return int(ok.group(1)), ""


_DCMTK_DIAG = re.compile(r"^[WEF]: ", re.MULTILINE)


def _storescu_quiet_count(res: ProcResult, _scratch: Path, expected: int) -> tuple[int | None, str]:
    # storescu has no end-of-run report, and its -v log costs it 10–15% on tiny files, so timed
    # runs are quiet. It halts at the first failed store and exits with the status's high byte
    # (0xA700 -> 167) and warns about files it skips, so exit 0 with no W:/E:/F: line means every
    # scanned file was stored; the -v pass before the timed runs counts them (verify_storescu).
    diag = _DCMTK_DIAG.findall(res.output)
    if res.rc == 0 and not diag:
        return expected, ""
    return None, "warnings or errors in the output" if diag else ""


def storescu_verbose_count(output: str) -> int:
    return len(re.findall(r"Received Store Response \(Success\)", output))


def _dcmsend_count(res: ProcResult, scratch: Path, _expected: int) -> tuple[int | None, str]:
    # dcmsend exits 0 even when every store is refused (seen: 200 x 0xA700, rc 0), so the
    # count from its report file (+crf, written once at the end) is the only proof.
    try:
        report = (scratch / "dcmsend-report.txt").read_text("utf-8", "replace")
    except OSError:
        return None, "no +crf report"
    m = re.search(r"with status SUCCESS\s*:\s*(\d+)", report)
    return (int(m.group(1)), "") if m else (0, "no SUCCESS line in the +crf report")


def _pynetdicom_count(res: ProcResult, _scratch: Path, _expected: int) -> tuple[int | None, str]:
    # The CLI's exit code does not reflect failed stores; count the success responses it logs
    # with -v (the logging is noise next to its ~50 ms per file without TCP_NODELAY).
    return len(re.findall(r"Received Store Response \(Status: 0x0000", res.output)), ""


def migrator_store_sender(jobs: int, pdu: int, name: str | None = None) -> Sender:
    """``migrator store -j JOBS`` (also used by run_bench.py)."""
    # No -q: it drops the counts from the summary, which is printed once at the end
    # either way (measured: same time as -q, while --report would cost ~5%).
    template = [*migrator_command(), "store", "--host", HOST, "--port", "{port}"]
    template += ["--called-ae", AET, "--dir", "{dir}", "-R", "-j", str(jobs), "--max-pdu", str(pdu)]
    return Sender(
        name or f"migrator-j{jobs}",
        f"migrator store -j{jobs}",
        template,
        _migrator_count,
        "summary 'Successful:' line, 'Failed: 0'",
    )


def storescu_sender(storescu: str, pdu: int) -> Sender:
    """DCMTK ``storescu``, one association (also used by run_bench.py)."""
    # +sd: scan the directory for input files, +r: recurse.
    template = [storescu, "-aec", AET, "+sd", "+r", "-pdu", str(pdu), HOST, "{port}", "{dir}"]
    return Sender(
        "storescu",
        "DCMTK storescu",
        template,
        _storescu_quiet_count,
        "exit 0 and no W:/E:/F: line (halts on the first failed store); "
        "an untimed -v pass counts the success responses",
    )


def build_senders(
    names: Sequence[str], pdu: int, storescu: str | None, dcmsend: str | None
) -> tuple[list[Sender], dict[str, str]]:
    """The senders to run, in run order, and the ones skipped with the reason."""
    pdu_s = str(pdu)
    skipped: dict[str, str] = {}
    senders: list[Sender] = []
    for name in names:
        if name in ("migrator-j1", "migrator-j4"):
            senders.append(migrator_store_sender(int(name.removeprefix("migrator-j")), pdu))
        elif name == "storescu":
            if storescu is None:
                skipped[name] = "DCMTK storescu not found"
                continue
            senders.append(storescu_sender(storescu, pdu))
        elif name == "dcmsend":
            if dcmsend is None:
                skipped[name] = "DCMTK dcmsend not found"
                continue
            template = [dcmsend, "-aec", AET, "--scan-directories", "--recurse", "-pdu", pdu_s]
            template += ["+crf", "{scratch}/dcmsend-report.txt", HOST, "{port}", "{dir}"]
            senders.append(
                Sender(
                    name,
                    "DCMTK dcmsend",
                    template,
                    _dcmsend_count,
                    "'with status SUCCESS' in its +crf report",
                )
            )
        elif name == "pynetdicom":
            try:
                importlib.metadata.version("pynetdicom")
            except importlib.metadata.PackageNotFoundError:
                skipped[name] = "pynetdicom not installed in this interpreter"
                continue
            template = [sys.executable, "-m", "pynetdicom", "storescu", HOST, "{port}", "{dir}"]
            template += ["-r", "-aec", AET, "-pdu", pdu_s, "-v"]
            senders.append(
                Sender(
                    name,
                    "pynetdicom storescu CLI",
                    template,
                    _pynetdicom_count,
                    "'Status: 0x0000' responses in its -v log",
                    uses_subset=True,
                )
            )
        else:  # parse_args validates names; this guards future edits
            raise SetupError(f"unknown sender {name!r}")
    return senders, skipped


# --------------------------------------------------------------------------------------------
# Measurement


@dataclass
class Run:
    seconds: float
    rc: int | None
    files_sent: int | None


@dataclass
class Outcome:
    sender: Sender
    fileset: FileSet
    runs: list[Run] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.runs)

    @property
    def median_s(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def files_per_s(self) -> float:
        return self.fileset.files / self.median_s

    @property
    def mb_per_s(self) -> float:
        return self.fileset.bytes / 1e6 / self.median_s


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_once(
    sender: Sender,
    outcome: Outcome,
    receiver: Receiver,
    scratch: Path,
    env: dict[str, str],
    timeout: float,
) -> None:
    if not receiver.alive():
        raise SetupError(f"storescp died:\n{tail(receiver.log())}")
    for leftover in scratch.iterdir():  # a stale dcmsend report must not count for this run
        leftover.unlink()
    fs = outcome.fileset
    res = run_timed(sender.argv(fs.dir, receiver.port, scratch), env, timeout)
    sent, note = sender.count(res, scratch, fs.files)
    outcome.runs.append(Run(res.seconds, res.rc, sent))
    if res.rc is None:
        outcome.error = f"timed out after {timeout:.0f} s"
    elif res.rc != 0:
        outcome.error = f"exit code {res.rc}"
    elif sent != fs.files:
        outcome.error = f"sent {sent} of {fs.files} files" + (f" ({note})" if note else "")
    if outcome.error:
        outcome.error += f"\n{tail(res.output)}"
    if not receiver.alive():
        raise SetupError(f"storescp died during {sender.label}:\n{tail(receiver.log())}")


def verify_storescu(
    sender: Sender, corpus: Corpus, receiver: Receiver, env: dict[str, str], timeout: float
) -> tuple[int, str | None]:
    """One untimed ``storescu -v`` pass that counts the success responses (see the quiet runs)."""
    argv = sender.argv(corpus.full.dir, receiver.port, Path("."))
    res = run_timed([argv[0], "-v", *argv[1:]], env, timeout)
    counted = storescu_verbose_count(res.output)
    if res.rc != 0 or counted != corpus.full.files:
        return counted, f"-v pass: exit {res.rc}, {counted} of {corpus.full.files} stored\n" + tail(
            res.output
        )
    return counted, None


# --------------------------------------------------------------------------------------------
# Report


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def ratio(a: Outcome | None, b: Outcome) -> float | None:
    if a is None or not a.ok or not b.ok:
        return None
    return a.files_per_s / b.files_per_s


def fmt_ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def net_rate(o: Outcome, startup: dict[str, float]) -> float | None:
    """files/s once this sender's own 1-file time (start-up + association) is taken off."""
    base = startup.get(o.sender.name)
    if base is None or not o.ok or o.median_s <= base:
        return None
    return o.fileset.files / (o.median_s - base)


def table(
    title: str, outcomes: list[Outcome], skipped: dict[str, str], startup: dict[str, float]
) -> str:
    by_name = {o.sender.name: o for o in outcomes}
    j1, j4 = by_name.get("migrator-j1"), by_name.get("migrator-j4")
    rows = [
        f"### {title}",
        "",
        "| sender | files | MB | s (median) | s (min–max) | files/s | MB/s "
        "| files/s excl. start-up | migrator -j1 / X | migrator -j4 / X |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        fs = o.fileset
        mb = f"{fs.bytes / 1e6:,.1f}"
        if not o.ok:
            reason = (o.error or "no run").splitlines()[0]
            rows.append(f"| {o.sender.label} | {fs.files} | {mb} | FAILED: {reason} |" + " |" * 6)
            continue
        secs = [r.seconds for r in o.runs]
        net = net_rate(o, startup)
        rows.append(
            f"| {o.sender.label} | {fs.files} | {mb} | {o.median_s:.3f} "
            f"| {min(secs):.3f}–{max(secs):.3f} | {fmt_rate(o.files_per_s)} "
            f"| {o.mb_per_s:,.1f} | {'–' if net is None else fmt_rate(net)} "
            f"| {fmt_ratio(ratio(j1, o))} | {fmt_ratio(ratio(j4, o))} |"
        )
    for name, why in skipped.items():
        rows.append(f"| {name} | skipped: {why} |" + " |" * 8)
    return "\n".join(rows)


def machine_info(storescu: str | None, dcmsend: str | None) -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    git = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        repo = Path(__file__).resolve().parent.parent
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        git = f"{head}{' (dirty work tree)' if dirty else ''}" if head else None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "storescu": _version_line(storescu) if storescu else None,
        "dcmsend": _version_line(dcmsend) if dcmsend else None,
        "pynetdicom": version("pynetdicom"),
        "pydicom": version("pydicom"),
        "pacs-migrator": version("pacs-migrator"),
        "git": git,
    }


def outcome_json(
    o: Outcome, j1: Outcome | None, j4: Outcome | None, startup: dict[str, float]
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "sender": o.sender.name,
        "label": o.sender.label,
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
            files_per_s_excl_startup=net_rate(o, startup),
            migrator_j1_over_x=ratio(j1, o),
            migrator_j4_over_x=ratio(j4, o),
        )
    return d


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="store_bench.py",
        description="Compare `migrator store` with DCMTK storescu/dcmsend and pynetdicom's "
        "storescu on the same receiver (DCMTK storescp --fork --ignore) and corpus, "
        "interleaved, and print throughput ratios.",
        epilog="Ratio columns: 'migrator -j1 / X' = migrator -j1 files/s divided by X's "
        "files/s (above 1: migrator is faster). Quote ratios from one run, not absolute rates.",
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
        "--repeat", type=int, default=3, help="interleaved repetitions; the median is reported"
    )
    p.add_argument(
        "--senders",
        default=",".join(ALL_SENDERS),
        help=f"comma-separated subset, run in this order (default: {','.join(ALL_SENDERS)})",
    )
    p.add_argument(
        "--pynetdicom-max-files",
        type=int,
        default=300,
        help="pynetdicom sends only the first N files of each corpus (it runs at tens of "
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
        "--timeout", type=float, default=900, help="per-run timeout in seconds (default: 900)"
    )
    p.add_argument("--dcmtk-dir", type=Path, help="look for DCMTK tools here first")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    args.corpus = args.corpus or [parse_corpus_spec(s) for s in DEFAULT_CORPORA]
    args.senders = [s.strip() for s in args.senders.split(",") if s.strip()]
    bad = [s for s in args.senders if s not in ALL_SENDERS]
    if bad or not args.senders or len(set(args.senders)) != len(args.senders):
        p.error(f"--senders: expected distinct names from {', '.join(ALL_SENDERS)}")
    if len(set(args.corpus)) != len(args.corpus):
        p.error("--corpus: the same SIZE:COUNT was given twice")
    if args.repeat < 1 or args.pynetdicom_max_files < 1 or args.timeout <= 0:
        p.error("--repeat, --pynetdicom-max-files and --timeout must be positive")
    if not 4096 <= args.pdu <= 131072:
        p.error("--pdu must be within 4096..131072 (DCMTK's range)")
    return args


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # SystemExit unwinds through the finally blocks that stop storescp and remove temp dirs.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    storescp = find_dcmtk_tool("storescp", args.dcmtk_dir)
    if storescp is None:
        log("error: DCMTK storescp not found on PATH; apt-get install -y dcmtk")
        return EXIT_SETUP
    storescu = find_dcmtk_tool("storescu", args.dcmtk_dir)
    dcmsend = find_dcmtk_tool("dcmsend", args.dcmtk_dir)
    senders, skipped = build_senders(args.senders, args.pdu, storescu, dcmsend)
    info = machine_info(storescu, dcmsend)
    env = sender_env()

    work = Path(tempfile.mkdtemp(prefix="store-bench-"))
    receiver = Receiver(storescp, work, args.pdu)
    try:
        root = args.corpus_dir.resolve() if args.corpus_dir else work / "corpora"
        corpora = [
            prepare_corpus(size, n, root, args.seed, work / "subsets", args.pynetdicom_max_files)
            for size, n in args.corpus
        ]
        # One file, sent by everyone: the untimed warm-up, and unless disabled a timed "corpus"
        # that shows process start-up plus one association, with no throughput in it.
        first = sorted(p for p in corpora[0].full.dir.rglob("*") if p.is_file())[:1]
        probe = _link_subset(first, work / PROBE_NAME)
        if not args.no_startup_probe:
            corpora.insert(0, Corpus(PROBE_NAME, corpora[0].size, probe, probe))
        scratch = work / "scratch"
        scratch.mkdir()

        receiver.start()
        log(f"receiver: {storescp} on {HOST}:{receiver.port}")

        # Warm-up, untimed: page cache, and one send per sender so the first timed run does not
        # pay for compiling .pyc files or loading shared libraries.
        for c in corpora:
            warm_page_cache(c.full)
        for s in senders:
            res = run_timed(s.argv(probe.dir, receiver.port, scratch), env, args.timeout)
            if res.rc != 0:
                log(f"warm-up of {s.label} exited {res.rc}:\n{tail(res.output)}")

        results: dict[str, list[Outcome]] = {
            c.name: [Outcome(s, c.subset if s.uses_subset else c.full) for s in senders]
            for c in corpora
        }
        verified: dict[str, int] = {}
        scu = next((s for s in senders if s.name == "storescu"), None)
        if scu is not None:
            for c in corpora:
                counted, problem = verify_storescu(scu, c, receiver, env, args.timeout)
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
                    measure_once(o.sender, o, receiver, scratch, env, args.timeout)
                    r = o.runs[-1]
                    rate = "FAILED" if o.error else f"{o.fileset.files / r.seconds:9.1f} files/s"
                    log(
                        f"[{rep}/{args.repeat}] {c.name:<12} {o.sender.label:<24} "
                        f"{r.seconds:7.3f} s  {rate}"
                        + (f"  {o.error.splitlines()[0]}" if o.error else "")
                    )
    except SetupError as exc:
        log(f"error: {exc}")
        return EXIT_SETUP
    finally:
        receiver.stop()
        shutil.rmtree(work, ignore_errors=True)

    # Report.
    cpus = info["cpus_usable"] or info["cpu_count"]
    head = [
        f"date {info['date']}  host {info['hostname']}  CPUs {info['cpu_count']} "
        f"(usable {cpus})  load at start {info['loadavg_at_start']}",
        f"python {info['python']}  pynetdicom {info['pynetdicom']}  pydicom {info['pydicom']}  "
        f"pacs-migrator {info['pacs-migrator']}  git {info['git']}",
        f"storescu: {info['storescu']}  dcmsend: {info['dcmsend']}",
        f"receiver: storescp --fork --ignore -pdu {args.pdu} (TCP_NODELAY=1); "
        f"repeat {args.repeat}, median; files/s include process start-up",
    ]
    print("\n".join(head))
    # Each sender's median 1-file time, to show rates with start-up taken off (not for ratios).
    startup = {o.sender.name: o.median_s for o in results.get(PROBE_NAME, []) if o.ok}
    for c in corpora:
        if c.name == PROBE_NAME:
            title = "start-up probe: 1 file (process start + one association; read seconds)"
        else:
            title = f"{c.name}: {c.full.files} files, {c.full.bytes / 1e6:,.1f} MB"
            if "pynetdicom" in args.senders and c.subset.files < c.full.files:
                title += f" (pynetdicom: first {c.subset.files} files)"
        print()
        print(table(title, results[c.name], skipped, {} if c.name == PROBE_NAME else startup))
    failures = [(c, o) for c in corpora for o in results[c.name] if not o.ok]
    for c, o in failures:
        print(f"\nFAILED {o.sender.label} on {c.name}:\n{o.error}")

    if args.json:
        doc: dict[str, Any] = {
            "machine": info,
            "settings": {
                "receiver": f"storescp --fork --ignore -pdu {args.pdu} -aet {AET}",
                "repeat": args.repeat,
                "pdu": args.pdu,
                "seed": args.seed,
                "pynetdicom_max_files": args.pynetdicom_max_files,
                "senders": args.senders,
            },
            "skipped": skipped,
            "corpora": [],
            "ok": not failures,
        }
        for c in corpora:
            by_name = {o.sender.name: o for o in results[c.name]}
            j1, j4 = by_name.get("migrator-j1"), by_name.get("migrator-j4")
            doc["corpora"].append(
                {
                    "name": c.name,
                    "size": c.size,
                    "files": c.full.files,
                    "bytes": c.full.bytes,
                    "startup_probe": c.name == PROBE_NAME,
                    "storescu_verified_files": verified.get(c.name),
                    "senders": [
                        outcome_json(o, j1, j4, {} if c.name == PROBE_NAME else startup)
                        for o in results[c.name]
                    ],
                }
            )
        args.json.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return EXIT_SENDER_FAILED if failures else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
