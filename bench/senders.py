"""The senders the bench compares, how each is invoked, and how each proves it sent every file.

A run counts only with exit code 0 *and* the full count taken from the sender's own record
(bench/README.md, "Proof that every file was sent"): several of these tools exit 0 after
failed stores, so the exit code alone proves nothing.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.measure import ProcResult, SetupError
from bench.receiver import AET, HOST

RUN = "migrator-run"
#: Every sender, in run order. pynetdicom-cli (the CLI as shipped) is off by default: at ~20
#: tiny files/s it is 100 times slower than the others and only sends a subset.
ALL_SENDERS = (
    "migrator-j1",
    "migrator-j4",
    RUN,
    "storescu",
    "dcmsend",
    "pynetdicom-1",
    "pynetdicom-4p",
    "pynetdicom-cli",
)
DEFAULT_SENDERS = ALL_SENDERS[:-1]
#: ``migrator store -j N`` for any N from 1 to 99, e.g. ``migrator-j2``.
_STORE_NAME = re.compile(r"migrator-j([1-9][0-9]?)")
DCMTK = ("storescu", "dcmsend")
#: The senders "× best peer" compares with.
PEERS = (*DCMTK, "pynetdicom-1", "pynetdicom-4p", "pynetdicom-cli")
PYNETDICOM_SCRIPT = Path(__file__).resolve().parent / "peers_pynetdicom.py"
REPORT_NAME = "run-report.json"
# Clock slack when checking that a migrator run job started after the launch (same host clock,
# but time.time() is taken in two processes).
_CLOCK_SLACK_S = 0.05


def is_store(name: str) -> bool:
    return _STORE_NAME.fullmatch(name) is not None


def is_migrator(name: str) -> bool:
    return name == RUN or is_store(name)


def known(name: str) -> bool:
    return name in ALL_SENDERS or is_store(name)


Count = Callable[[ProcResult, Path, int], tuple[int | None, str]]


@dataclass
class Sender:
    name: str
    label: str
    # Command line; "{dir}", "{port}" and "{scratch}" (a fresh directory per run) filled in.
    template: list[str]
    # (process result, scratch dir, files expected) -> (files stored or None, note)
    count: Count
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


def migrator_command() -> list[str]:
    """``migrator`` from the same environment as this interpreter (not whatever PATH finds)."""
    script = Path(sys.executable).parent / "migrator"  # no resolve(): keep the venv's bin
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "migrator"]


# --------------------------------------------------------------------------------------------
# Counting what each sender stored


def migrator_count(res: ProcResult, _scratch: Path, _expected: int) -> tuple[int | None, str]:
    ok = re.search(r"Successful:\s+(\d+)", res.output)
    failed = re.search(r"Failed:\s+(\d+)", res.output)
    if ok is None or failed is None:
        return None, "no 'Successful:'/'Failed:' lines in the summary"
    if int(failed.group(1)):
        return int(ok.group(1)), f"{failed.group(1)} failed"
    return int(ok.group(1)), ""


def run_count(res: ProcResult, scratch: Path, expected: int) -> tuple[int | None, str]:
    """Files stored according to ``migrator run``'s ``--report`` (``-q`` prints no counts),
    and only if its job started after this run's launch: a resumed job sends nothing."""
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
    started = report.get("started")
    if not isinstance(started, int | float):
        problems.append("no job 'started' stamp")
    elif res.started_at and started < res.started_at - _CLOCK_SLACK_S:
        problems.append(f"job started {res.started_at - started:.1f} s before launch: resumed")
        stored = 0
    return stored, "; ".join(problems)


def run_phases(res: ProcResult, scratch: Path) -> dict[str, float] | None:
    """One ``migrator run`` split at its report's job ``started``/``finished`` stamps:
    start-up (imports, embedded Redis, worker up), job (plan + send + wait), stop."""
    try:
        report = json.loads((scratch / REPORT_NAME).read_text("utf-8"))
        started, finished = float(report["started"]), float(report["finished"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    launch, exit_ = res.started_at, res.started_at + res.seconds
    return {"startup_s": started - launch, "job_s": finished - started, "stop_s": exit_ - finished}


_DCMTK_DIAG = re.compile(r"^[WEF]: ", re.MULTILINE)


def storescu_quiet_count(res: ProcResult, _scratch: Path, expected: int) -> tuple[int | None, str]:
    # storescu has no end-of-run report, and its -v log costs it 10–15% on tiny files, so timed
    # runs are quiet. It halts at the first failed store and exits with the status's high byte
    # (0xA700 -> 167) and warns about files it skips, so exit 0 with no W:/E:/F: line means every
    # scanned file was stored; an untimed -v pass per corpus counts them (storescu_verbose_count).
    diag = _DCMTK_DIAG.findall(res.output)
    if res.rc == 0 and not diag:
        return expected, ""
    return None, "warnings or errors in the output" if diag else ""


def storescu_verbose_count(output: str) -> int:
    return len(re.findall(r"Received Store Response \(Success\)", output))


def dcmsend_count(res: ProcResult, scratch: Path, _expected: int) -> tuple[int | None, str]:
    # dcmsend exits 0 even when every store is refused (seen: 200 x 0xA700, rc 0), so the
    # count from its report file (+crf, written once at the end) is the only proof.
    try:
        report = (scratch / "dcmsend-report.txt").read_text("utf-8", "replace")
    except OSError:
        return None, "no +crf report"
    m = re.search(r"with status SUCCESS\s*:\s*(\d+)", report)
    return (int(m.group(1)), "") if m else (0, "no SUCCESS line in the +crf report")


def pynetdicom_cli_count(res: ProcResult, _scratch: Path, _expected: int) -> tuple[int | None, str]:
    # The CLI's exit code does not reflect failed stores; count the success responses it logs
    # with -v (the logging is noise next to its ~50 ms per file without TCP_NODELAY).
    return len(re.findall(r"Received Store Response \(Status: 0x0000", res.output)), ""


def pynetdicom_tuned_count(
    res: ProcResult, _scratch: Path, expected: int
) -> tuple[int | None, str]:
    # peers_pynetdicom.py checks every status itself and ends with this line.
    m = re.search(r"pynetdicom-tuned: stored (\d+) of (\d+) files, failed (\d+)", res.output)
    if m is None:
        return None, "no 'pynetdicom-tuned: stored' line"
    stored, total, failed = (int(g) for g in m.groups())
    notes = [f"{failed} failed"] if failed else []
    if total != expected:
        notes.append(f"found {total} files")
    return stored, "; ".join(notes)


# --------------------------------------------------------------------------------------------
# The senders


def migrator_store_sender(jobs: int, pdu: int) -> Sender:
    # No -q: it drops the counts from the summary, which is printed once at the end
    # either way (measured: same time as -q, while --report would cost ~5%).
    template = [*migrator_command(), "store", "--host", HOST, "--port", "{port}"]
    template += ["--called-ae", AET, "--dir", "{dir}", "-R", "-j", str(jobs), "--max-pdu", str(pdu)]
    return Sender(
        f"migrator-j{jobs}",
        f"migrator store -j{jobs}",
        template,
        migrator_count,
        "summary 'Successful:' line, 'Failed: 0'",
    )


def migrator_run_sender(workers: int, pdu: int) -> Sender:
    """``migrator run`` on its embedded Redis, a fresh ``--state-dir`` per run (``{scratch}``)."""
    template = [*migrator_command(), "run", "{dir}", "--host", HOST, "--port", "{port}"]
    template += ["--called-ae", AET, "--state-dir", "{scratch}/state"]
    template += ["--workers", str(workers), "--max-pdu", str(pdu)]
    template += ["-q", "--report", "{scratch}/" + REPORT_NAME]
    return Sender(
        RUN,
        f"migrator run --workers {workers}",
        template,
        run_count,
        "exit 0; --report totals.stored = files, failed 0, no fatal; job started after launch "
        "(fresh --state-dir: not resumed)",
    )


def storescu_sender(storescu: str, pdu: int) -> Sender:
    # +sd: scan the directory for input files, +r: recurse.
    template = [storescu, "-aec", AET, "+sd", "+r", "-pdu", str(pdu), HOST, "{port}", "{dir}"]
    return Sender(
        "storescu",
        "DCMTK storescu",
        template,
        storescu_quiet_count,
        "exit 0 and no W:/E:/F: line (halts on the first failed store); "
        "an untimed -v pass counts the success responses",
    )


def dcmsend_sender(dcmsend: str, pdu: int) -> Sender:
    template = [dcmsend, "-aec", AET, "--scan-directories", "--recurse", "-pdu", str(pdu)]
    template += ["+crf", "{scratch}/dcmsend-report.txt", HOST, "{port}", "{dir}"]
    return Sender(
        "dcmsend",
        "DCMTK dcmsend",
        template,
        dcmsend_count,
        "'with status SUCCESS' in its +crf report",
    )


def pynetdicom_tuned_sender(processes: int, pdu: int) -> Sender:
    template = [sys.executable, str(PYNETDICOM_SCRIPT), HOST, "{port}", "{dir}"]
    template += ["--aec", AET, "--pdu", str(pdu), "--processes", str(processes)]
    what = "1 association" if processes == 1 else f"{processes} processes"
    return Sender(
        "pynetdicom-1" if processes == 1 else f"pynetdicom-{processes}p",
        f"pynetdicom tuned, {what}",
        template,
        pynetdicom_tuned_count,
        "exit 0 and its 'stored N of N files, failed 0' line (it checks every status)",
    )


def pynetdicom_cli_sender(pdu: int) -> Sender:
    template = [sys.executable, "-m", "pynetdicom", "storescu", HOST, "{port}", "{dir}"]
    template += ["-r", "-aec", AET, "-pdu", str(pdu), "-v"]
    return Sender(
        "pynetdicom-cli",
        "pynetdicom storescu CLI",
        template,
        pynetdicom_cli_count,
        "'Status: 0x0000' responses in its -v log",
        uses_subset=True,
    )


def build_senders(
    names: Sequence[str],
    pdu: int,
    storescu: str | None,
    dcmsend: str | None,
    run_workers: int,
) -> tuple[list[Sender], dict[str, str]]:
    """The senders to run, in run order, and the ones skipped with the reason."""
    skipped: dict[str, str] = {}
    senders: list[Sender] = []
    have_pynetdicom = True
    try:
        importlib.metadata.version("pynetdicom")
    except importlib.metadata.PackageNotFoundError:
        have_pynetdicom = False
    for name in names:
        if is_store(name):
            senders.append(migrator_store_sender(int(name.removeprefix("migrator-j")), pdu))
        elif name == RUN:
            senders.append(migrator_run_sender(run_workers, pdu))
        elif name in DCMTK:
            tool = storescu if name == "storescu" else dcmsend
            if tool is None:
                skipped[name] = f"DCMTK {name} not found"
            elif name == "storescu":
                senders.append(storescu_sender(tool, pdu))
            else:
                senders.append(dcmsend_sender(tool, pdu))
        elif name.startswith("pynetdicom-"):
            if not have_pynetdicom:
                skipped[name] = "pynetdicom not installed in this interpreter"
            elif name == "pynetdicom-cli":
                senders.append(pynetdicom_cli_sender(pdu))
            else:
                senders.append(pynetdicom_tuned_sender(1 if name == "pynetdicom-1" else 4, pdu))
        else:  # parse_args validates names; this guards future edits
            raise SetupError(f"unknown sender {name!r}")
    return senders, skipped
