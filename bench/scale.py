#!/usr/bin/env python3
"""Scale figures of the engine: planning rate, planner memory, Redis memory per planned file,
and Redis commands per stored file, measured against a real Redis and real workers.

Four phases, each on a fresh private ``redis-server`` (free loopback port, no persistence):

1. **plan** — write a synthetic N-line NDJSON manifest (default 1,000,000 lines; URIs like
   ``/archive/<yyyy>/<study>/<series>/IM<n>.dcm``, sizes, random ``2.25.`` UIDs; deterministic
   seed) and run the real planner on it, ``migrator plan --manifest FILE --redis-url URL``,
   with no workers: every batch's task stays queued in Redis. Measured: wall time (lines/s),
   the planner's CPU time, its peak RSS (``VmHWM`` polled, and ``ru_maxrss`` from ``wait4``),
   Redis ``used_memory`` before and after, and ``MEMORY USAGE`` of every key, grouped into the
   Celery queue and the job's ledger (dedup index, packed batches, state strings, the rest).
2. **plan at a small listpack limit** — the same plan with ``hash-max-listpack-entries`` set
   low (default 16), so that the dedup index's buckets outgrow the compact encoding as they
   would past ~the limit × 65,536 files per job at the server's default: what that costs.
3. **send** — ``--files`` tiny DICOM files (``migrator.synth.write_corpus``), planned from a
   manifest, sent by ``LocalWorkers`` (``--workers`` processes) to DCMTK
   ``storescp --fork --ignore`` on loopback; once without a rate limit and once with
   ``--rate-limit`` set too high to slow anything (the limiter's cost per file). Redis
   ``CONFIG RESETSTAT`` after planning, ``INFO commandstats`` when every file has its outcome:
   commands per stored file, by command. The bench's own polls are subtracted.
4. **attribution** — a short extra send (``--attribution-files``) with the rate limit, watched
   by ``redis-cli MONITOR``, which marks each command executed inside a Lua script: how many
   of each command are client commands and how many run inside the scripts (untimed: MONITOR
   slows Redis down).

Run it with the project's virtualenv::

    .venv/bin/python bench/scale.py --help
    .venv/bin/python bench/scale.py --json /tmp/scale.json

Helpers for the receiver, corpora, tool lookup and machine info come from the modules of
``store_bench.py`` (bench/receiver.py, corpora.py, measure.py).
Depends on ``redis-server`` and ``redis-cli`` on PATH and DCMTK ``storescp``; not on ``tests/``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from migrator.errors import MigratorError

if __package__ in (None, ""):  # run as a script: bench/ is sys.path[0], make `bench.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpora import prepare_corpus, warm_page_cache
from bench.measure import SetupError, kill_group, log, sender_env, stop_group, tail
from bench.receiver import AET, DEFAULT_PDU, HOST, Receiver, find_dcmtk_tool, version_line
from bench.senders import migrator_command
from bench.store_bench import EXIT_OK, EXIT_SETUP, exit_on_sigterm
from bench.store_bench import EXIT_SENDER_FAILED as EXIT_FAILED
from bench.store_bench import machine_info as bench_machine_info

#: The queue the planner fills (workers.app.QUEUE; not imported: that would build the app).
QUEUE = "migrator.batches"
PLAN_JOB = "scale"
#: Where the send phases park the planned batches while the workers start.
HOLD = "scale-bench.hold"
#: MONITOR prints a container command's subcommand as a second word; INFO commandstats
#: names it ``script|load``.
_CONTAINERS = {"script", "config", "client", "object", "memory", "command", "function", "acl"}
#: Acceptance targets of issue 9.
TARGET_RSS_MB = 200.0
TARGET_LINES_PER_S = 20_000.0
TARGET_REDIS_MB_PER_M = 150.0
TARGET_CMDS_PER_FILE = 2.0
#: How often the planner's /proc/PID/status is read for VmHWM (the exact peak comes from
#: wait4's ru_maxrss; the poll is a cross-check that needs no cooperation from the child).
_RSS_POLL_S = 0.05
#: How often the bench asks the ledger whether every file has its outcome (each poll is one
#: HGETALL, subtracted from the command counts).
_SETTLE_POLL_S = 0.2
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_MB = 1e6  # MB = 10**6 bytes, as in the other benches
_MONITOR_LINE = re.compile(r'^\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"(?: "([^"]*)")?')


# --------------------------------------------------------------------------------------------
# Redis


class RedisServer:
    """A private ``redis-server`` on a free loopback port, nothing persisted.

    ``--save '' --appendonly no``: the figures must not include fork-for-save pauses or AOF
    writes, and nothing outlives the bench. The server is our child in its own session; the
    process answering on the port must be it (``INFO server`` → ``process_id``), else another
    server took the port between ``free_port()`` and our bind, and we would measure that one.
    """

    def __init__(self, workdir: Path, name: str, config: Sequence[str] = ()) -> None:
        self.dir = workdir / f"redis-{name}"
        self.config = list(config)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=60)

    def start(self, attempts: int = 3) -> RedisServer:
        from migrator.netutil import free_port

        server = shutil.which("redis-server")
        if server is None:
            raise SetupError("redis-server not found on PATH; apt-get install -y redis-server")
        self.dir.mkdir(parents=True, exist_ok=True)
        log_path = self.dir / "redis.log"
        for _ in range(attempts):
            self.port = free_port(HOST)
            argv = [server, "--port", str(self.port), "--bind", HOST, "--save", ""]
            argv += ["--appendonly", "no", "--dir", str(self.dir), *self.config]
            with open(log_path, "ab") as logf:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready():
                return self
            self.stop()
        raise SetupError(f"redis-server did not start:\n{tail(log_path.read_text())}")

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False  # e.g. the port was taken: try another
            try:
                with contextlib.closing(self.client()) as c:
                    pid = int(c.info("server")["process_id"])
            except redis.RedisError:
                time.sleep(0.02)
                continue
            if pid != self._proc.pid:
                raise SetupError(
                    f"port {self.port} is answered by Redis PID {pid}, not ours ({self._proc.pid})"
                )
            return True
        return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_group(proc)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def redis_cpu_s(client: redis.Redis) -> float:
    """CPU seconds of Redis's main thread (the one that executes commands: its capacity)."""
    cpu = client.info("cpu")
    user = cpu.get("used_cpu_user_main_thread", cpu["used_cpu_user"])
    sys_ = cpu.get("used_cpu_sys_main_thread", cpu["used_cpu_sys"])
    return float(user) + float(sys_)


def command_calls(client: redis.Redis) -> Counter[str]:
    """``INFO commandstats`` as command → calls (subcommands as ``config|resetstat``)."""
    stats = client.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


# --------------------------------------------------------------------------------------------
# Memory by key group


#: Key groups, first match wins. The job's keys come from migrator.keys.JobKeys.
def key_group(key: str, job: str) -> str:
    job_prefix = f"migrator:job:{{{job}}}:"
    if key == QUEUE or key.startswith(("_kombu", "unacked")):
        return "queue"
    if key.startswith(job_prefix):
        rest = key[len(job_prefix) :]
        if rest.startswith("pl:"):
            return "ledger: dedup index"
        if rest.startswith("batch:"):
            return "ledger: packed batches"
        if rest.startswith("st:"):
            return "ledger: state strings"
        if rest.startswith("out:"):
            return "ledger: outcome lines"
        return "ledger: other"
    return "other"


@dataclass
class KeyGroup:
    keys: int = 0
    bytes: int = 0  # MEMORY USAGE summed (scaled up when sampled)
    sampled: int = 0  # keys actually measured


def memory_by_group(client: redis.Redis, job: str, max_exact: int, seed: int) -> dict[str, Any]:
    """SCAN every key and sum ``MEMORY USAGE key SAMPLES 0`` per group.

    SAMPLES 0 measures every element of an aggregate (the default samples 5 and extrapolates,
    which is wrong for the Celery list's variable-size messages). A group with more than
    ``max_exact`` keys is measured on a random sample of that many and scaled up.
    """
    names: dict[str, list[bytes]] = {}
    for raw in client.scan_iter(count=1000):
        names.setdefault(key_group(_text(raw), job), []).append(raw)
    rng = random.Random(seed)
    groups: dict[str, KeyGroup] = {}
    for group, keys in sorted(names.items()):
        measured = keys if len(keys) <= max_exact else rng.sample(keys, max_exact)
        total = 0
        for start in range(0, len(measured), 1000):
            pipe = client.pipeline(transaction=False)
            for k in measured[start : start + 1000]:
                pipe.memory_usage(k, samples=0)
            total += sum(int(v or 0) for v in pipe.execute())
        scale = len(keys) / len(measured) if measured else 0.0
        groups[group] = KeyGroup(len(keys), round(total * scale), len(measured))
    return {g: vars(v) for g, v in groups.items()}


def bucket_stats(client: redis.Redis, job: str) -> dict[str, Any]:
    """The dedup index's buckets: their sizes, and per encoding (listpack, or hashtable once
    a bucket outgrew ``hash-max-listpack-entries``) the buckets, entries and bytes."""
    keys = list(client.scan_iter(match=f"migrator:job:{{{job}}}:pl:*", count=1000))
    sizes: list[int] = []
    by_encoding: dict[str, dict[str, Any]] = {}
    for start in range(0, len(keys), 1000):
        pipe = client.pipeline(transaction=False)
        for k in keys[start : start + 1000]:
            pipe.hlen(k)
            pipe.object("encoding", k)
            pipe.memory_usage(k, samples=0)
        out = pipe.execute()
        for n, enc, nbytes in zip(out[0::3], out[1::3], out[2::3], strict=True):
            name = _text(enc)
            e = by_encoding.setdefault(name, {"buckets": 0, "entries": 0, "bytes": 0})
            e["buckets"] += 1
            e["entries"] += int(n)
            e["bytes"] += int(nbytes or 0)
            sizes.append(int(n))
    for e in by_encoding.values():
        e["bytes_per_entry"] = round(e["bytes"] / e["entries"], 1) if e["entries"] else 0
    return {
        "buckets": len(keys),
        "entries_mean": sum(sizes) / len(sizes) if sizes else 0.0,
        "entries_max": max(sizes, default=0),
        "by_encoding": by_encoding,
    }


# --------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Manifest:
    path: Path
    lines: int
    bytes: int  # size of the file
    total_size: int  # sum of the "size" fields: the archive it describes
    studies: int


def _uid(rng: random.Random) -> str:
    # A 2.25 UID is "2.25." + a UUID as a decimal integer: up to 39 random-looking digits,
    # which compress far worse than sequential ones (the ledger's packed batches are zlib).
    return f"2.25.{rng.getrandbits(128)}"


# Series shapes (modality: images per series, bytes per image), a rough mix of an archive:
# CT and MR series of hundreds of slices, single large radiographs, short US clips.
_SERIES = (
    ("CT", (40, 600), (520_000, 530_000)),
    ("MR", (15, 250), (130_000, 270_000)),
    ("CR", (1, 2), (6_000_000, 18_000_000)),
    ("US", (1, 40), (300_000, 1_200_000)),
)
_SERIES_WEIGHTS = (4, 3, 2, 1)


def write_manifest(path: Path, lines: int, seed: int) -> Manifest:
    """An NDJSON manifest of ``lines`` files in study/series order, deterministic in ``seed``.

    Reused when it exists with the same name (the name holds lines and seed) and line count.
    """
    if path.is_file():
        with open(path, "rb") as f:
            count = sum(1 for _ in f)
        if count == lines:
            log(f"reusing manifest {path}")
            return _manifest_info(path, lines)
    t0 = time.perf_counter()
    rng = random.Random(seed)
    total = studies = n = 0
    with open(path, "w", encoding="ascii") as f:
        while n < lines:
            studies += 1
            study, year = _uid(rng), rng.randint(2005, 2024)
            for _ in range(rng.choice((1, 1, 2, 2, 3, 4, 6))):
                _, (lo, hi), (slo, shi) = rng.choices(_SERIES, _SERIES_WEIGHTS)[0]
                series = _uid(rng)
                base = f'{{"uri": "/archive/{year}/{study}/{series}/IM'
                chunk = []
                for _ in range(min(rng.randint(lo, hi), lines - n)):
                    size = rng.randint(slo, shi)
                    total += size
                    chunk.append(
                        f'{base}{n}.dcm", "size": {size}, "sop_instance_uid": "{_uid(rng)}", '
                        f'"study_instance_uid": "{study}"}}\n'
                    )
                    n += 1
                f.write("".join(chunk))
                if n >= lines:
                    break
    log(f"wrote {lines:,}-line manifest in {time.perf_counter() - t0:.1f} s: {path}")
    return Manifest(path, lines, path.stat().st_size, total, studies)


def _manifest_info(path: Path, lines: int) -> Manifest:
    total = 0
    studies: set[str] = set()
    with open(path, encoding="ascii") as f:
        for text in f:
            row = json.loads(text)
            total += int(row["size"])
            studies.add(row["study_instance_uid"])
    return Manifest(path, lines, path.stat().st_size, total, len(studies))


def corpus_manifest(files: Sequence[Path], path: Path) -> None:
    """A manifest of real files (uri and size only: workers read each header before sending,
    which is the path a manifest-planned job takes)."""
    with open(path, "w", encoding="utf-8") as f:
        for p in files:
            f.write(json.dumps({"uri": str(p), "size": p.stat().st_size}) + "\n")


# --------------------------------------------------------------------------------------------
# Processes


@dataclass
class PlannerRun:
    rc: int
    wall_s: float
    cpu_s: float
    vmhwm_kb: int  # highest VmHWM seen by polling /proc
    maxrss_kb: int  # ru_maxrss from wait4: the kernel's peak for the process
    output: str


def plan_argv(manifest: Path, url: str, job: str, extra: Sequence[str] = ()) -> list[str]:
    return [
        *migrator_command(),
        "plan",
        "--manifest",
        str(manifest),
        "--redis-url",
        url,
        "--job",
        job,
        *extra,
    ]


def run_planner(argv: Sequence[str], out_path: Path, timeout: float) -> PlannerRun:
    """Run the planner to its end, polling its VmHWM, and reap it with ``wait4`` for its
    rusage (CPU time and ru_maxrss), which ``subprocess`` does not expose."""
    t0 = time.perf_counter()
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=sender_env(),
            start_new_session=True,
        )
    hwm = 0
    status_path = Path(f"/proc/{proc.pid}/status")
    try:
        while True:
            with contextlib.suppress(OSError):
                for line in status_path.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() - t0 > timeout:
                kill_group(proc)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(_RSS_POLL_S)
    except BaseException:
        kill_group(proc)
        with contextlib.suppress(ChildProcessError):
            os.wait4(proc.pid, 0)
        raise
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by us, not by Popen
    return PlannerRun(
        proc.returncode,
        wall,
        usage.ru_utime + usage.ru_stime,
        hwm,
        usage.ru_maxrss,
        out_path.read_text("utf-8", "replace"),
    )


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (own + reaped children) of the live processes of a process group."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()  # field 3 (state) is fields[0]
        if int(fields[2]) == pgid:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / _CLK_TCK


# --------------------------------------------------------------------------------------------
# Phase 1 and 2: plan a big manifest


def plan_phase(
    manifest: Manifest,
    work: Path,
    name: str,
    listpack_entries: int | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    with RedisServer(work, name) as server, contextlib.closing(server.client()) as client:
        if listpack_entries is not None:
            client.config_set("hash-max-listpack-entries", listpack_entries)
        setting = "hash-max-listpack-entries"
        limit = int(client.config_get(setting).get(setting) or 0)
        before = used_memory(client)
        client.config_resetstat()
        cpu0 = redis_cpu_s(client)
        # The destination is never contacted: no worker runs, no C-ECHO preflight. Port 1
        # makes that obvious.
        argv = plan_argv(manifest.path, server.url, PLAN_JOB)
        argv += ["--host", HOST, "--port", "1", "--called-ae", "X", "--no-preflight"]
        log(f"[{name}] planning {manifest.lines:,} lines (hash-max-listpack-entries {limit})")
        run = run_planner(argv, work / f"planner-{name}.log", args.timeout)
        redis_cpu = redis_cpu_s(client) - cpu0
        calls = command_calls(client)
        calls["config|resetstat"] -= 1  # ours
        after = used_memory(client)
        raw_counts = client.hgetall(f"migrator:job:{{{PLAN_JOB}}}:counts")
        counts = {_text(k): int(v) for k, v in raw_counts.items()}
        queued = int(client.llen(QUEUE))
        groups = memory_by_group(client, PLAN_JOB, args.memory_exact_keys, args.seed)
        buckets = bucket_stats(client, PLAN_JOB)
        info_mem = client.info("memory")
    planned = counts.get("planned", 0)
    problems = []
    if run.rc != 0:
        problems.append(f"the planner exited {run.rc}:\n{tail(run.output)}")
    if planned != manifest.lines:
        problems.append(f"{planned} files planned, expected {manifest.lines}")
    per_file = planned or 1
    ledger_bytes = sum(g["bytes"] for k, g in groups.items() if k.startswith("ledger"))
    queue_bytes = groups.get("queue", {}).get("bytes", 0)
    delta = after - before
    accounted = sum(g["bytes"] for g in groups.values())
    result: dict[str, Any] = {
        "name": name,
        "hash_max_listpack_entries": limit,
        "lines": manifest.lines,
        "planned": planned,
        "batches_queued": queued,
        "planner": {
            "rc": run.rc,
            "wall_s": run.wall_s,
            "lines_per_s": manifest.lines / run.wall_s,
            "cpu_s": run.cpu_s,
            "lines_per_cpu_s": manifest.lines / run.cpu_s if run.cpu_s else None,
            "peak_rss_mb": max(run.vmhwm_kb, run.maxrss_kb) * 1024 / _MB,
            "vmhwm_polled_mb": run.vmhwm_kb * 1024 / _MB,
            "ru_maxrss_mb": run.maxrss_kb * 1024 / _MB,
            "output_tail": tail(run.output, 5),
        },
        "redis": {
            "used_memory_before": before,
            "used_memory_after": after,
            "used_memory_delta": delta,
            "mb_per_million_files": delta / per_file,  # bytes/file = MB per 10**6 files
            "bytes_per_file": delta / per_file,
            "ledger_bytes": ledger_bytes,
            "ledger_bytes_per_file": ledger_bytes / per_file,
            "queue_bytes": queue_bytes,
            "queue_bytes_per_file": queue_bytes / per_file,
            "queue_bytes_per_batch": queue_bytes / queued if queued else None,
            "unattributed_bytes": delta - accounted,
            "groups": groups,
            "dedup_buckets": buckets,
            "used_memory_rss": int(info_mem["used_memory_rss"]),
            "mem_fragmentation_ratio": float(info_mem["mem_fragmentation_ratio"]),
            "cpu_s": redis_cpu,
            "cpu_us_per_file": redis_cpu * 1e6 / per_file,
            "commands": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
            "commands_total": sum(calls.values()),
            "commands_per_file": sum(calls.values()) / per_file,
        },
        "ok": not problems,
        "problems": problems,
    }
    p = result["planner"]
    log(
        f"[{name}] {planned:,} planned in {run.wall_s:.1f} s ({p['lines_per_s']:,.0f} lines/s, "
        f"CPU {run.cpu_s:.1f} s), peak RSS {p['peak_rss_mb']:.1f} MB, Redis +{delta / _MB:.1f} MB"
    )
    for problem in problems:
        log(f"[{name}] problem: {problem}")
    return result


def profile_planner(manifest: Manifest, work: Path, out: Path, args: argparse.Namespace) -> Any:
    """The same plan under cProfile (slower: for where the time goes, not how much)."""
    with RedisServer(work, "profile") as server:
        argv = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "migrator"]
        argv += plan_argv(manifest.path, server.url, PLAN_JOB)[len(migrator_command()) :]
        argv += ["--host", HOST, "--port", "1", "--called-ae", "X", "--no-preflight"]
        log(f"[profile] planning {manifest.lines:,} lines under cProfile -> {out}")
        run = run_planner(argv, work / "planner-profile.log", args.timeout * 3)
    if run.rc != 0:
        return {"rc": run.rc, "output_tail": tail(run.output)}
    import pstats

    stats = pstats.Stats(str(out))
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (filename, line, func), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{Path(filename).name}:{line}({func})",
                "calls": calls,
                "tottime_s": tottime,
                "cumtime_s": cumtime,
            }
        )
    # Frames that merely enclose the whole run (runpy, click, plan_command...) say nothing:
    # start the cumulative list below plan_manifest.
    inner = [r for r in rows if r["cumtime_s"] < 0.9 * total]
    top_cum = sorted(inner, key=lambda r: -r["cumtime_s"])[:25]
    top_tot = sorted(rows, key=lambda r: -r["tottime_s"])[:15]
    return {
        "rc": 0,
        "total_s": total,
        "wall_s": run.wall_s,
        "top_cumulative": top_cum,
        "top_self": top_tot,
    }


# --------------------------------------------------------------------------------------------
# Phase 3 and 4: send through real workers


@dataclass
class SendSpec:
    name: str
    manifest: Path
    files: int
    rate_limit: float | None
    monitor: bool = False
    idle_s: float = 0.0


@dataclass
class Own:
    """Commands the bench itself sends during a measured window (subtracted)."""

    calls: Counter[str] = field(default_factory=Counter)


def wait_settled(
    client: redis.Redis, job: str, files: int, timeout: float, alive: Any, own: Own
) -> dict[str, int]:
    from migrator.ledger import Ledger

    ledger = Ledger(client, job)
    deadline = time.monotonic() + timeout
    while True:
        counts = ledger.counts()  # one HGETALL
        own.calls["hgetall"] += 1
        if counts["planned"] >= files and counts["in_flight"] <= 0:
            return counts
        if time.monotonic() > deadline or not alive():
            return counts
        time.sleep(_SETTLE_POLL_S)


def send_phase(
    spec: SendSpec, work: Path, receiver: Receiver, args: argparse.Namespace
) -> dict[str, Any]:
    from workers.local import LocalWorkers

    job = f"send-{spec.name}"
    with RedisServer(work, spec.name) as server, contextlib.closing(server.client()) as client:
        mem_start = used_memory(client)
        extra = ["--host", HOST, "--port", str(receiver.port), "--called-ae", AET]
        extra += ["--max-pdu", str(args.pdu)]
        if spec.rate_limit:
            extra += ["--rate-limit", f"{spec.rate_limit:g}"]
        plan = run_planner(
            plan_argv(spec.manifest, server.url, job, extra),
            work / f"planner-{spec.name}.log",
            args.timeout,
        )
        if plan.rc != 0:
            return {
                "name": spec.name,
                "ok": False,
                "problems": [f"plan exited {plan.rc}:\n{tail(plan.output)}"],
            }
        mem_planned = used_memory(client)
        # Hold the batches back while the workers start: they would begin sending before
        # they answer the readiness ping, and the window measured must hold only sending
        # (start-up is paid once per worker, not per file). RENAME wakes a blocked BRPOP
        # (Redis signals a list key added under a new name), and kombu polls every second.
        client.rename(QUEUE, HOLD)
        monitor = None
        monitor_out = work / f"monitor-{spec.name}.txt"
        t_start = time.perf_counter()
        log(f"[{spec.name}] {spec.files:,} files planned; starting {args.workers} workers")
        with LocalWorkers(server.url, args.workers) as workers, contextlib.ExitStack() as stack:
            startup_s = time.perf_counter() - t_start
            if spec.monitor:
                monitor = start_monitor(server.port, monitor_out)
                stack.callback(stop_monitor, monitor)  # also when something below raises
            own = Own()
            client.config_resetstat()
            own.calls["config|resetstat"] += 1
            cpu0, wcpu0 = redis_cpu_s(client), group_cpu_s(workers.pid)
            own.calls["info"] += 1
            t0 = time.time()
            client.rename(HOLD, QUEUE)
            own.calls["rename"] += 1
            counts = wait_settled(client, job, spec.files, args.timeout, workers.alive, own)
            done = time.time()
            monitor_own = Counter(own.calls)
            if monitor is not None:
                stop_monitor(monitor)  # before the bench's own reads below
            redis_cpu = redis_cpu_s(client) - cpu0
            own.calls["info"] += 1
            worker_cpu = group_cpu_s(workers.pid) - wcpu0
            calls = command_calls(client)
            idle = None
            if spec.idle_s and counts["in_flight"] == 0:
                # What idle workers cost Redis (broker polls, heartbeats): it adds up over a
                # fleet whether or not there is work.
                client.config_resetstat()
                time.sleep(spec.idle_s)
                idle_calls = command_calls(client)
                idle_calls["config|resetstat"] -= 1
                idle = {
                    "seconds": spec.idle_s,
                    "workers": args.workers,
                    "commands": dict((+idle_calls).most_common()),
                    "commands_per_s": sum((+idle_calls).values()) / spec.idle_s,
                }
            log_tail = workers.log_tail() if not workers.alive() else ""
            workers.stop(graceful=counts["in_flight"] > 0)
        # The last outcome's own time stamp (workers stamp each file, 0.01 s resolution)
        # rather than the poll that noticed it: the poll adds up to one interval.
        last = last_outcome_at(client, job)
        # The ledger once every file has its outcome (the queue is drained by then): what a
        # finished job keeps in Redis, outcome lines included.
        mem_done = used_memory(client)
        groups_done = memory_by_group(client, job, args.memory_exact_keys, args.seed)
        # The outcome strings grow by APPEND, and Redis over-allocates a growing string (up
        # to twice its length): their text alone tells that slack apart.
        outcome_text = 0
        for key in client.scan_iter(match=f"migrator:job:{{{job}}}:out:*", count=1000):
            outcome_text += int(client.strlen(key))
    send_s = (last if last is not None else done) - t0
    calls.subtract(own.calls)
    calls = +calls
    stored = counts["stored"]
    problems = []
    if counts["planned"] != spec.files or stored != spec.files:
        problems.append(f"counts {counts}, expected {spec.files} stored")
    if log_tail:
        problems.append(f"the workers died:\n{log_tail}")
    total = sum(calls.values())
    per = stored or 1
    result: dict[str, Any] = {
        "name": spec.name,
        "job": job,
        "rate_limit": spec.rate_limit,
        "files": spec.files,
        "counts": counts,
        "workers": args.workers,
        "worker_startup_s": startup_s,
        "send_s": send_s,
        "files_per_s": stored / send_s if send_s > 0 else None,
        "worker_cpu_s": worker_cpu,
        "worker_cpu_ms_per_file": worker_cpu * 1e3 / per,
        "redis_cpu_s": redis_cpu,
        "redis_cpu_us_per_file": redis_cpu * 1e6 / per,
        "commands_total": total,
        "commands_per_file": total / per,
        "commands": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
        "bench_polls_subtracted": dict(own.calls),
        "memory": {
            "used_memory_planned_per_file": (mem_planned - mem_start) / per,
            "used_memory_done_per_file": (mem_done - mem_start) / per,
            "groups_done": groups_done,
            "outcome_text_bytes_per_file": outcome_text / per,
        },
        "idle": idle,
        "ok": not problems,
        "problems": problems,
    }
    if spec.monitor:
        result["attribution"] = attribute(monitor_out, monitor_own, per)
    log(
        f"[{spec.name}] {stored:,}/{spec.files:,} stored in {send_s:.1f} s "
        f"({result['files_per_s'] or 0:,.0f} files/s), {total:,} Redis commands = "
        f"{result['commands_per_file']:.2f} per file"
    )
    for problem in problems:
        log(f"[{spec.name}] problem: {problem}")
    return result


def start_monitor(port: int, out: Path) -> subprocess.Popen[bytes]:
    cli = shutil.which("redis-cli")
    if cli is None:
        raise SetupError("redis-cli not found on PATH")
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [cli, "-h", HOST, "-p", str(port), "monitor"],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # MONITOR answers OK once subscribed; nothing is sent before that line is written.
    deadline = time.monotonic() + 10
    while out.stat().st_size == 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SetupError(f"redis-cli monitor did not start: {out.read_text()}")
        time.sleep(0.02)
    return proc


def stop_monitor(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        kill_group(proc, signal.SIGTERM)
    proc.wait()


def last_outcome_at(client: redis.Redis, job: str) -> float | None:
    from migrator.ledger import Ledger

    return max((extra["at"] for _, _, extra in Ledger(client, job).iter_outcomes()), default=None)


def attribute(monitor_out: Path, own: Counter[str], per: int) -> dict[str, Any]:
    """Per command: calls from clients vs calls inside Lua scripts, from MONITOR's output
    (``[db lua]`` marks a command a script ran). MONITOR does not show CONFIG and a few
    admin commands; nothing on the hot path is among them."""
    client_calls: Counter[str] = Counter()
    lua_calls: Counter[str] = Counter()
    with open(monitor_out, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _MONITOR_LINE.match(line)
            if m is None:
                continue
            source, cmd = m.group(1), m.group(2).lower()
            if cmd in _CONTAINERS and m.group(3):
                cmd = f"{cmd}|{m.group(3).lower()}"
            (lua_calls if source == "lua" else client_calls)[cmd] += 1
    client_calls.subtract({k: v for k, v in own.items() if k != "config|resetstat"})
    client_calls = +client_calls
    return {
        "client": dict(client_calls.most_common()),
        "lua": dict(lua_calls.most_common()),
        "client_per_file": sum(client_calls.values()) / per,
        "lua_per_file": sum(lua_calls.values()) / per,
        "evalsha_per_file": client_calls["evalsha"] / per,
    }


# --------------------------------------------------------------------------------------------
# Report


def fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def plan_table(plans: list[dict[str, Any]]) -> str:
    rows = [
        "| hash-max-listpack-entries | lines | planner wall s | lines/s | planner CPU s "
        "| lines per CPU-s | planner peak RSS MB | Redis Δ used_memory MB | Redis MB per 10⁶ files "
        "| Redis CPU µs/line | Redis commands/line |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in plans:
        p, m = r["planner"], r["redis"]
        if not r["ok"]:
            rows.append(f"| {r['hash_max_listpack_entries']} | FAILED (see below) |" + " |" * 9)
            continue
        rows.append(
            f"| {r['hash_max_listpack_entries']} | {r['lines']:,} | {p['wall_s']:.1f} "
            f"| {p['lines_per_s']:,.0f} | {p['cpu_s']:.1f} | {fmt(p['lines_per_cpu_s'], 0)} "
            f"| {p['peak_rss_mb']:.1f} | {m['used_memory_delta'] / _MB:.1f} "
            f"| {m['mb_per_million_files']:.1f} | {m['cpu_us_per_file']:.1f} "
            f"| {m['commands_per_file']:.3f} |"
        )
    return "\n".join(rows)


def memory_table(plans: list[dict[str, Any]]) -> str:
    plans = [r for r in plans if r["ok"]]
    names = sorted({g for r in plans for g in r["redis"]["groups"]})
    head = "| key group | " + " | ".join(
        f"keys (limit {r['hash_max_listpack_entries']}) | bytes/file (limit "
        f"{r['hash_max_listpack_entries']})"
        for r in plans
    )
    rows = [head + " |", "|---|" + "---:|" * (2 * len(plans))]
    for g in [*names, "unattributed (Redis's own: key tables, buffers)", "total Δ used_memory"]:
        cells = []
        for r in plans:
            m, n = r["redis"], r["planned"] or 1
            if g in m["groups"]:
                keys, b = f"{m['groups'][g]['keys']:,}", m["groups"][g]["bytes"]
            elif g.startswith("unattributed"):
                keys, b = "", m["unattributed_bytes"]
            elif g.startswith("total"):
                keys, b = "", m["used_memory_delta"]
            else:
                keys, b = "0", 0
            cells += [keys, f"{b / n:.1f}"]
        rows.append(f"| {g} | " + " | ".join(cells) + " |")
    for r in plans:
        m = r["redis"]
        rows.append("")
        rows.append(
            f"Redis at limit {r['hash_max_listpack_entries']}: RSS "
            f"{m['used_memory_rss'] / _MB:.1f} MB for used_memory "
            f"{m['used_memory_after'] / _MB:.1f} MB (mem_fragmentation_ratio "
            f"{m['mem_fragmentation_ratio']})"
        )
    for r in plans:
        d = r["redis"]["dedup_buckets"]
        rows.append("")
        rows.append(
            f"dedup index at limit {r['hash_max_listpack_entries']}: {d['buckets']:,} buckets, "
            f"{d['entries_mean']:.1f} entries on average, {d['entries_max']} at most; "
            + "; ".join(
                f"{enc}: {e['buckets']:,} buckets, {e['entries']:,} entries, "
                f"{e['bytes_per_entry']} B/entry (bucket overhead included)"
                for enc, e in sorted(d["by_encoding"].items())
            )
        )
    return "\n".join(rows)


def send_table(sends: list[dict[str, Any]]) -> str:
    rows = [
        "| run | files stored | worker start s | send s | files/s | worker CPU ms/file "
        "| Redis CPU µs/file | Redis commands | commands/file |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sends:
        if "counts" not in s:
            rows.append(f"| {s['name']} | FAILED | | | | | | | |")
            continue
        rate = "–" if s["rate_limit"] is None else f"--rate-limit {s['rate_limit']:g}"
        rows.append(
            f"| {s['name']} ({rate}) | {s['counts']['stored']:,} | {s['worker_startup_s']:.1f} "
            f"| {s['send_s']:.1f} | {fmt(s['files_per_s'], 0)} | {s['worker_cpu_ms_per_file']:.2f} "
            f"| {s['redis_cpu_us_per_file']:.1f} | {s['commands_total']:,} "
            f"| {s['commands_per_file']:.2f} |"
        )
    return "\n".join(rows)


def command_table(sends: list[dict[str, Any]], attribution: dict[str, Any] | None) -> str:
    measured = [s for s in sends if "commands" in s]
    if not measured:
        return "(no send was measured)"
    names = sorted(
        {c for s in measured for c in s["commands"]},
        key=lambda c: -max(s["commands"].get(c, 0) for s in measured),
    )
    head = "| command | " + " | ".join(f"{s['name']}: calls | per file" for s in measured)
    if attribution:
        head += " | inside Lua (MONITOR pass) | client (MONITOR pass)"
    rows = [head + " |", "|---|" + "---:|" * (2 * len(measured) + (2 if attribution else 0))]
    for c in names:
        cells = []
        for s in measured:
            n = s["commands"].get(c, 0)
            cells += [f"{n:,}", f"{n / (s['counts']['stored'] or 1):.3f}"]
        if attribution:
            per = attribution["files"] or 1
            lua, cl = attribution["lua"].get(c, 0), attribution["client"].get(c, 0)
            cells += [f"{lua / per:.3f}", f"{cl / per:.3f}"]
        rows.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    plan = next((p for p in doc["plans"] if p["name"] == "plan" and p["ok"]), None)
    if plan is not None:
        lines = plan["lines"]
        scaled = "" if lines >= 1_000_000 else f" (at {lines:,} lines, not 10⁶)"
        out.append(
            {
                "target": f"planner peak RSS ≤ {TARGET_RSS_MB:g} MB for 1M lines{scaled}",
                "measured": plan["planner"]["peak_rss_mb"],
                "unit": "MB",
                "holds": plan["planner"]["peak_rss_mb"] <= TARGET_RSS_MB,
            }
        )
        out.append(
            {
                "target": f"≥ {TARGET_LINES_PER_S:,.0f} lines/s planned (wall){scaled}",
                "measured": plan["planner"]["lines_per_s"],
                "unit": "lines/s",
                "holds": plan["planner"]["lines_per_s"] >= TARGET_LINES_PER_S,
            }
        )
        out.append(
            {
                "target": f"Redis ≤ {TARGET_REDIS_MB_PER_M:g} MB per million planned files "
                "(Δ used_memory, queue included)",
                "measured": plan["redis"]["mb_per_million_files"],
                "unit": "MB",
                "holds": plan["redis"]["mb_per_million_files"] <= TARGET_REDIS_MB_PER_M,
            }
        )
    for s in doc["sends"]:
        if not s["ok"] or s.get("attribution") is not None:
            continue
        out.append(
            {
                "target": f"≤ {TARGET_CMDS_PER_FILE:g} Redis commands per stored file "
                f"({s['name']}; every cmdstat, Lua-internal included)",
                "measured": s["commands_per_file"],
                "unit": "commands",
                "holds": s["commands_per_file"] <= TARGET_CMDS_PER_FILE,
            }
        )
    return out


def machine_info(storescp: str) -> dict[str, Any]:
    info = bench_machine_info(None, None)
    for k in ("storescu", "dcmsend", "pynetdicom", "pydicom"):
        info.pop(k, None)
    info["storescp"] = version_line(storescp)
    server = shutil.which("redis-server")
    info["redis_server"] = version_line(server) if server else None
    for dist in ("celery", "redis", "pydicom"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = None
    return info


def print_report(doc: dict[str, Any]) -> None:
    info, st = doc["machine"], doc["settings"]
    print(
        f"date {info['date']}  host {info['hostname']}  CPUs {info['cpu_count']} "
        f"(usable {info['cpus_usable']})  load at start {info['loadavg_at_start']}"
    )
    print(
        f"python {info['python']}  pacs-migrator {info['pacs-migrator']}  celery {info['celery']}  "
        f"redis-py {info['redis']}  git {info['git']}"
    )
    print(f"redis-server: {info['redis_server']}  storescp: {info['storescp']}")
    m = doc.get("manifest")
    if m:
        print(
            f"manifest: {m['lines']:,} NDJSON lines, {m['bytes'] / _MB:,.1f} MB, {m['studies']:,} "
            f"studies, {m['total_size'] / 1e12:,.2f} TB described; seed {st['seed']}"
        )
    if doc["plans"]:
        print("\n### plan: `migrator plan --manifest` into a fresh Redis, no workers\n")
        print(plan_table(doc["plans"]))
        print("\n### Redis memory after planning, by key group (bytes per planned file)\n")
        print(memory_table(doc["plans"]))
    if doc["sends"]:
        timed = [s for s in doc["sends"] if s.get("attribution") is None]
        print(
            f"\n### send: {st['files']:,} tiny files, manifest-planned, LocalWorkers "
            f"({st['workers']} processes) -> storescp --fork --ignore\n"
        )
        print(send_table(doc["sends"]))
        attribution = next((s for s in doc["sends"] if s.get("attribution")), None)
        attr = None
        if attribution is not None:
            attr = {**attribution["attribution"], "files": attribution["counts"]["stored"]}
        print("\n### Redis commands per stored file, by command (INFO commandstats)\n")
        print(command_table(timed, attr))
        if attr is not None:
            print(
                f"\nMONITOR pass ({attr['files']:,} files, rate-limited): client commands "
                f"{attr['client_per_file']:.2f}/file (EVALSHA {attr['evalsha_per_file']:.2f}), "
                f"inside Lua {attr['lua_per_file']:.2f}/file"
            )
        done = next((s for s in timed if "memory" in s), None)
        if done is not None:
            mem = done["memory"]
            n = done["counts"]["stored"] or 1
            print(
                f"\n### Redis memory of the finished job ({done['name']}; bytes per stored "
                f"file)\n\nΔ used_memory after planning {mem['used_memory_planned_per_file']:.1f}, "
                f"after every outcome {mem['used_memory_done_per_file']:.1f}; outcome lines: "
                f"{mem['outcome_text_bytes_per_file']:.1f} bytes of text per file\n"
            )
            print("| key group | keys | bytes/file |\n|---|---:|---:|")
            for g, v in sorted(mem["groups_done"].items()):
                print(f"| {g} | {v['keys']:,} | {v['bytes'] / n:.1f} |")
        idle = next((s["idle"] for s in doc["sends"] if s.get("idle")), None)
        if idle:
            top = ", ".join(f"{k} {v}" for k, v in list(idle["commands"].items())[:6])
            print(
                f"\nidle workers ({idle['workers']} processes, {idle['seconds']:g} s): "
                f"{idle['commands_per_s']:.1f} commands/s ({top})"
            )
    if doc.get("profile"):
        prof = doc["profile"]
        total = prof.get("total_s", 0.0) or 1.0
        print(
            f"\n### planner under cProfile ({total:.1f} s profiled; cProfile inflates Python "
            "calls, so read the shares, not the seconds)\n"
        )
        for title, key in (("cumulative", "top_cumulative"), ("self time", "top_self")):
            print(f"\nby {title}:\n\n| function | calls | self s | cumulative s | share |")
            print("|---|---:|---:|---:|---:|")
            for r in prof.get(key, [])[:15]:
                share = (r["cumtime_s"] if key == "top_cumulative" else r["tottime_s"]) / total
                cells = f"{r['calls']:,} | {r['tottime_s']:.2f} | {r['cumtime_s']:.2f}"
                print(f"| {r['function']} | {cells} | {share:.0%} |")
    print("\n### targets (issue 9)\n")
    print("| target | measured | holds |\n|---|---:|---|")
    for t in doc["targets"]:
        holds = "yes" if t["holds"] else "NO"
        print(f"| {t['target']} | {t['measured']:,.2f} {t['unit']} | {holds} |")
    for phase in [*doc["plans"], *doc["sends"]]:
        for problem in phase.get("problems", []):
            print(f"\nFAILED {phase['name']}: {problem}")


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scale.py",
        description="Plan a synthetic manifest into a real Redis (lines/s, planner peak RSS, "
        "Redis memory per planned file) and send tiny files through real workers to a local "
        "SCP (Redis commands per stored file, with and without a rate limit).",
    )
    p.add_argument("--lines", type=int, default=1_000_000, help="manifest lines (default: 10⁶)")
    p.add_argument(
        "--files", type=int, default=20_000, help="tiny files sent by workers (default: 20,000)"
    )
    p.add_argument("--workers", type=int, default=2, help="LocalWorkers processes (default: 2)")
    p.add_argument(
        "--rate-limit",
        type=float,
        default=100_000,
        help="files/s of the rate-limited send: high enough not to slow it (default: 100000)",
    )
    p.add_argument(
        "--compare-listpack-entries",
        type=int,
        default=16,
        metavar="N",
        help="plan again with hash-max-listpack-entries N to show the dedup index outgrowing "
        "listpacks (default: 16; 0 = skip)",
    )
    p.add_argument(
        "--attribution-files",
        type=int,
        default=2000,
        help="files of the extra MONITOR pass that splits commands into client and "
        "Lua-internal (default: 2000, capped at --files; 0 = skip)",
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=5.0,
        help="after the unlimited send, count the idle workers' commands this long (default: 5)",
    )
    p.add_argument(
        "--profile-planner",
        type=Path,
        metavar="FILE.prof",
        help="also plan the manifest under cProfile (into another fresh Redis) and print where "
        "the time goes",
    )
    p.add_argument(
        "--phases",
        default="plan,send",
        help="comma-separated subset of plan,send (default: both)",
    )
    p.add_argument(
        "--memory-exact-keys",
        type=int,
        default=500_000,
        help="key groups larger than this are measured on a random sample (default: 500000)",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        help="keep the manifest and corpus here and reuse them (default: a temp dir, removed)",
    )
    p.add_argument("--seed", type=int, default=0, help="manifest and corpus seed (default: 0)")
    p.add_argument("--pdu", type=int, default=DEFAULT_PDU, help=f"max PDU (default: {DEFAULT_PDU})")
    p.add_argument(
        "--timeout", type=float, default=900, help="per-phase timeout, seconds (default: 900)"
    )
    p.add_argument("--dcmtk-dir", type=Path, help="look for DCMTK storescp here first")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    args.phases = {x.strip() for x in args.phases.split(",") if x.strip()}
    if not args.phases or args.phases - {"plan", "send"}:
        p.error("--phases: a subset of plan,send")
    if args.lines < 1 or args.files < 1 or not 1 <= args.workers <= 64 or args.timeout <= 0:
        p.error("--lines, --files and --timeout must be positive, --workers within 1..64")
    if args.rate_limit <= 0 or args.compare_listpack_entries < 0 or args.attribution_files < 0:
        p.error(
            "--rate-limit must be positive; --compare-listpack-entries and "
            "--attribution-files not negative"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    # LocalWorkers and the planner inherit our environment: a MIGRATOR_RATE_LIMIT or
    # MIGRATOR_REDIS_URL of the caller's must not change what is measured.
    for k in [k for k in os.environ if k.startswith("MIGRATOR_")]:
        del os.environ[k]
    storescp = find_dcmtk_tool("storescp", args.dcmtk_dir)
    if "send" in args.phases and storescp is None:
        log("error: DCMTK storescp not found on PATH; apt-get install -y dcmtk")
        return EXIT_SETUP
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        log("error: redis-server/redis-cli not on PATH; apt-get install -y redis-server")
        return EXIT_SETUP
    info = machine_info(storescp or "storescp")
    t_start = time.perf_counter()
    temp = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    keep = args.work_dir.resolve() if args.work_dir else temp
    keep.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"machine": info, "plans": [], "sends": []}
    receiver = Receiver(storescp, temp, args.pdu) if storescp else None
    try:
        if "plan" in args.phases:
            manifest = write_manifest(
                keep / f"manifest-{args.lines}-seed{args.seed}.ndjson", args.lines, args.seed
            )
            doc["manifest"] = {k: v for k, v in vars(manifest).items() if k != "path"}
            doc["plans"].append(plan_phase(manifest, temp, "plan", None, args))
            if args.compare_listpack_entries:
                n = args.compare_listpack_entries
                doc["plans"].append(plan_phase(manifest, temp, f"plan-listpack{n}", n, args))
            if args.profile_planner:
                doc["profile"] = profile_planner(manifest, temp, args.profile_planner, args)
        if "send" in args.phases:
            assert receiver is not None
            corpus = prepare_corpus(
                "tiny", args.files, keep / "corpora", args.seed, temp / "subsets", 0
            )
            files = sorted(p for p in corpus.full.dir.rglob("*") if p.is_file())
            warm_page_cache(corpus.full)
            corpus_manifest(files, temp / "send.ndjson")
            receiver.start()
            log(f"receiver: {storescp} on {HOST}:{receiver.port}")
            specs = [
                SendSpec(
                    "unlimited", temp / "send.ndjson", len(files), None, idle_s=args.idle_seconds
                ),
                SendSpec("rate-limited", temp / "send.ndjson", len(files), args.rate_limit),
            ]
            n_attr = min(args.attribution_files, len(files))
            if n_attr:
                corpus_manifest(files[:n_attr], temp / "attribution.ndjson")
                specs.append(
                    SendSpec(
                        "monitor",
                        temp / "attribution.ndjson",
                        n_attr,
                        args.rate_limit,
                        monitor=True,
                    )
                )
            for spec in specs:
                doc["sends"].append(send_phase(spec, temp, receiver, args))
                if not receiver.alive():
                    raise SetupError(f"storescp died:\n{tail(receiver.log())}")
    except (SetupError, MigratorError) as exc:  # MigratorError: the workers did not start
        log(f"error: {exc}")
        return EXIT_SETUP
    finally:
        if receiver is not None:
            receiver.stop()
        shutil.rmtree(temp, ignore_errors=True)

    doc["settings"] = {
        k: (str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set) else v)
        for k, v in vars(args).items()
    }
    doc["wall_s"] = time.perf_counter() - t_start
    doc["targets"] = targets(doc)
    doc["ok"] = all(x["ok"] for x in [*doc["plans"], *doc["sends"]])
    print_report(doc)
    print(f"\nwall time of the whole bench: {doc['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return EXIT_OK if doc["ok"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
