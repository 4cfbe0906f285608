"""Which mechanism keeps job priorities under load: Celery priorities on one Redis queue, or
one queue per priority class (docs/weeks-long.md, "Several jobs on one fleet").

A functional measurement (counts, not throughput): real redis-server, real Celery worker
processes with the project's own settings (workers.app.settings(): acks_late, prefetch 1),
a task that notes when it starts (in Redis) and then sleeps like a batch being sent. A low
job's tasks fill the queue and keep every worker process busy; then a high job's tasks are
enqueued. Counted: the low tasks that *start* after the high ones were enqueued and before
the first high one starts (the ones already running are not counted: they cannot be taken
back).

    PYTHONPATH=$PWD python -m bench.priority_probe [--nodes 2] [--concurrency 2]

The worker side is this same module: ``PROBE_MECHANISM`` selects the broker options.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from celery import Celery

MECHANISMS = {
    # one queue; kombu's Redis transport keeps one list per priority step and BRPOPs them
    # in step order (0 first), so a lower number is served first
    "priorities": {"queues": ["probe"], "transport": {"priority_steps": list(range(10))}},
    # a queue per class, polled in the order given (queue_order_strategy=priority)
    "queues": {
        "queues": ["probe.high", "probe.normal", "probe.low"],
        "transport": {"queue_order_strategy": "priority"},
    },
    # the same queues with kombu's default strategy (round robin between queues)
    "queues-round-robin": {"queues": ["probe.high", "probe.normal", "probe.low"], "transport": {}},
}


def make_app(url: str, mechanism: str) -> Celery:
    from workers.app import settings

    conf = settings()
    conf["broker_transport_options"] = {
        **conf["broker_transport_options"],
        **MECHANISMS[mechanism]["transport"],
    }
    conf["task_default_queue"] = MECHANISMS[mechanism]["queues"][-1]
    app = Celery("probe", broker=url)
    app.conf.update(conf)
    return app


app = make_app(os.environ.get("PROBE_URL", "redis://127.0.0.1:1/0"),
               os.environ.get("PROBE_MECHANISM", "priorities"))  # fmt: skip


@app.task(name="probe.batch", acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator]
def batch(name: str, seconds: float) -> None:
    import redis

    client = redis.Redis.from_url(os.environ["PROBE_URL"])
    client.rpush("probe:started", f"{name} {time.time():.4f}")
    time.sleep(seconds)


def measure(url: str, mechanism: str, nodes: int, concurrency: int, tmp: Path) -> dict[str, float]:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    env = {**os.environ, "PROBE_URL": url, "PROBE_MECHANISM": mechanism}
    queues = ",".join(MECHANISMS[mechanism]["queues"])
    argv = [sys.executable, "-m", "celery", "-A", "bench.priority_probe", "worker", "-Q", queues]
    argv += ["-c", str(concurrency), "--without-mingle", "--without-gossip", "-l", "WARNING"]
    procs = []
    for n in range(nodes):
        with open(tmp / f"w{n}.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    [*argv, "-n", f"probe{n}@%h"], env=env, stdout=log, stderr=subprocess.STDOUT
                )
            )
    sender = make_app(url, mechanism)
    try:
        low = 60
        for n in range(low):
            if mechanism == "priorities":
                sender.send_task("probe.batch", args=[f"low{n}", 0.3], priority=9, queue="probe")
            else:
                sender.send_task("probe.batch", args=[f"low{n}", 0.3], queue="probe.low")
        # every worker process busy with low tasks for a while
        deadline = time.time() + 60
        while client.llen("probe:started") < 3 * nodes * concurrency and time.time() < deadline:
            time.sleep(0.01)
        enqueued = time.time()
        for n in range(10):
            if mechanism == "priorities":
                sender.send_task("probe.batch", args=[f"high{n}", 0.3], priority=0, queue="probe")
            else:
                sender.send_task("probe.batch", args=[f"high{n}", 0.3], queue="probe.high")
        while client.llen("probe:started") < low + 10 and time.time() < deadline + 60:
            time.sleep(0.05)
        started = [raw.decode().split() for raw in client.lrange("probe:started", 0, -1)]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    after = [(name, float(t)) for name, t in started if float(t) >= enqueued]
    first_high = next(i for i, (name, _) in enumerate(after) if name.startswith("high"))
    last_high = max(i for i, (name, _) in enumerate(after) if name.startswith("high"))
    highs = [i for i, (name, _) in enumerate(after) if name.startswith("high")]
    return {
        "low before first high": first_high,
        "low between high": last_high + 1 - len(highs) - first_high,
        "ms to first high": round((after[first_high][1] - enqueued) * 1000),
        "processes": nodes * concurrency,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from tests.peers.redis import RedisPeer

    with tempfile.TemporaryDirectory() as tmp:
        peer = RedisPeer(Path(tmp)).start()
        try:
            for mechanism in MECHANISMS:
                for _ in range(args.rounds):
                    got = measure(peer.url, mechanism, args.nodes, args.concurrency, Path(tmp))
                    print(mechanism, got, flush=True)
        finally:
            peer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
