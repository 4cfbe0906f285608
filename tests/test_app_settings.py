"""Celery settings: the visibility-timeout rule is enforced before a worker starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from migrator.errors import ConfigError
from workers.app import settings, validate_timing


def test_timing_rule() -> None:
    validate_timing(3600, 1500, 1800, 600)
    with pytest.raises(ConfigError, match="visibility timeout 5 s must exceed"):
        validate_timing(5, 7, 8, 0)
    with pytest.raises(ConfigError, match="soft time limit"):
        validate_timing(3600, 20, 10, 0)


def test_production_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VISIBILITY_TIMEOUT", "SOFT_TIME_LIMIT", "TIME_LIMIT", "MAX_LIMITER_WAIT"):
        monkeypatch.delenv(f"MIGRATOR_{name}", raising=False)
    conf = settings()
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    vt = conf["broker_transport_options"]["visibility_timeout"]
    assert (
        vt
        == conf["visibility_timeout"]
        == conf["result_backend_transport_options"]["visibility_timeout"]
    )
    assert vt > conf["task_time_limit"] + conf["migrator_max_wait"]
    assert conf["worker_send_task_events"] and conf["task_ignore_result"]


def test_a_worker_with_a_dangerous_timeout_refuses_to_start() -> None:
    env = {
        **os.environ,
        "MIGRATOR_VISIBILITY_TIMEOUT": "5",
        "MIGRATOR_TIME_LIMIT": "8",
        "MIGRATOR_SOFT_TIME_LIMIT": "7",
        "MIGRATOR_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--pool", "solo"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode != 0
    assert "visibility timeout 5 s must exceed the task time limit (8 s)" in proc.stderr


# What Celery's own command line makes of `worker_argv` (app.Worker replaced by a recorder):
# the same options as the local workers' `workers.launch`, which passes WORKER_OPTIONS as is.
_PARSE_ARGV = """
import json, sys
from workers.app import app
from workers.launch import worker_argv
seen = {}
class Recorder:
    def __init__(self, **kwargs):
        seen.update(kwargs)
        self.exitcode = 0
    def start(self):
        pass
app.Worker = Recorder
from celery.bin.celery import main
sys.argv = ["celery", *worker_argv(3, loglevel="WARNING", hostname="n@%h")[3:]]
try:
    main()
finally:
    seen["pool"] = seen["pool"].__module__ + "." + seen["pool"].__name__
    print(json.dumps(seen, default=str))
"""


def test_one_definition_of_the_worker_options() -> None:
    from celery.concurrency import get_implementation

    from workers.app import QUEUE, QUEUES, settings
    from workers.launch import QUEUE as LAUNCH_QUEUE
    from workers.launch import QUEUES as LAUNCH_QUEUES
    from workers.launch import WORKER_OPTIONS

    assert LAUNCH_QUEUE == QUEUE
    # --priority's queues, looked in high first (the order matters: kombu's "priority"
    # strategy BRPOPs them in the worker's order)
    assert [QUEUES["high"], QUEUES["normal"], QUEUES["low"]] == LAUNCH_QUEUES
    assert settings()["broker_transport_options"]["queue_order_strategy"] == "priority"
    proc = subprocess.run(
        [sys.executable, "-c", _PARSE_ARGV], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, value in WORKER_OPTIONS.items():
        if name == "pool":
            pool = get_implementation(value)
            assert seen["pool"] == f"{pool.__module__}.{pool.__name__}"
        else:
            assert seen[name] == value, name
    assert seen["concurrency"] == 3 and seen["loglevel"] == 30
