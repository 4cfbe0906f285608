"""Prometheus metrics of a worker: what it sent, how fast, and what the PACS answered.

Off unless ``MIGRATOR_METRICS_PORT`` is set. A Celery prefork worker is several processes,
so the metrics use prometheus-client's multiprocess mode: every pool child writes its values
to files in ``PROMETHEUS_MULTIPROC_DIR`` and the main worker process serves the sum of all of
them on the port. The directory must be in the environment before prometheus-client is first
imported (it picks its storage at import), so whoever starts a worker (`migrator worker`,
local workers of `migrator run`) passes it in: :func:`worker_env`.

Labels hold the destination (``host:port:AE``) and DICOM status codes only: never a file
name, UID or anything about a patient.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

PORT_ENV = "MIGRATOR_METRICS_PORT"
_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_OWNED_ENV = "MIGRATOR_METRICS_DIR_OWNED"


def enabled() -> bool:
    return bool(os.environ.get(PORT_ENV))


def worker_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment to start a worker with: a fresh multiprocess directory when metrics
    are on. It must exist before the worker process starts, because Celery's command line
    imports its plugins (Flower, which imports prometheus-client) before our code runs."""
    out = dict(env)
    if out.get(PORT_ENV) and not out.get(_DIR_ENV):
        out[_DIR_ENV] = tempfile.mkdtemp(prefix="migrator-metrics-", dir=out.get("TMPDIR"))
        out[_OWNED_ENV] = "1"
    return out


def serve() -> None:
    """Serve the summed metrics of all pool processes (called in the main worker process)."""
    if not enabled():
        return
    if not os.environ.get(_DIR_ENV):
        log.warning(
            "%s is set but the worker was not started by `migrator worker`: no metrics", PORT_ENV
        )
        return
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    port = int(os.environ[PORT_ENV])
    address = os.environ.get("MIGRATOR_METRICS_ADDRESS", "0.0.0.0")
    start_http_server(port, addr=address, registry=registry)
    log.info("metrics on http://%s:%d/metrics", address, port)


def cleanup() -> None:
    """At the worker's shutdown (main process): remove the directory made for it."""
    if os.environ.get(_OWNED_ENV) and os.environ.get(_DIR_ENV):
        shutil.rmtree(os.environ[_DIR_ENV], ignore_errors=True)


class _Metrics:
    """The metric objects, made on first use in each process."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        labels = ["destination"]
        self.files = Counter(
            "migrator_files", "Files with an outcome, by state", [*labels, "state"]
        )
        self.bytes = Counter("migrator_bytes_sent", "Bytes of files stored", labels)
        self.statuses = Counter(
            "migrator_cstore_status", "C-STORE responses by DIMSE status", [*labels, "status"]
        )
        self.latency = Histogram(
            "migrator_cstore_seconds",
            "C-STORE request to response",
            labels,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.opened = Counter("migrator_associations_opened", "Associations opened", labels)
        self.aborted = Counter(
            "migrator_associations_aborted", "Associations discarded after a loss or abort", labels
        )
        self.limiter_wait = Counter(
            "migrator_limiter_wait_seconds", "Seconds spent waiting on the rate limiter", labels
        )


_metrics: _Metrics | None = None


def _get() -> _Metrics | None:
    global _metrics
    if not enabled():
        return None
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics


def file_done(destination: str, outcome: Any) -> None:
    """Count one recorded outcome (a :class:`migrator.outcomes.FileOutcome`)."""
    m = _get()
    if m is None:
        return
    m.files.labels(destination, str(outcome.state)).inc()
    if outcome.status is not None:
        m.statuses.labels(destination, f"0x{outcome.status:04X}").inc()
    if outcome.seconds:
        m.latency.labels(destination).observe(outcome.seconds)
    if str(outcome.state) == "stored":
        m.bytes.labels(destination).inc(outcome.bytes)


def association_opened(destination: str) -> None:
    if (m := _get()) is not None:
        m.opened.labels(destination).inc()


def association_aborted(destination: str) -> None:
    if (m := _get()) is not None:
        m.aborted.labels(destination).inc()


def limiter_waited(destination: str, seconds: float) -> None:
    if seconds > 0 and (m := _get()) is not None:
        m.limiter_wait.labels(destination).inc(seconds)


class DestinationMetrics:
    """The transfer core's Observer (migrator/transfer/observe.py) for one destination."""

    def __init__(self, destination: str) -> None:
        self.destination = destination

    def file_done(self, outcome: Any) -> None:
        file_done(self.destination, outcome)

    def limiter_waited(self, seconds: float) -> None:
        limiter_waited(self.destination, seconds)

    def association_opened(self) -> None:
        association_opened(self.destination)

    def association_aborted(self) -> None:
        association_aborted(self.destination)
