"""A job's clock and history: its sending sessions and the changes made to it.

A job is sent in sessions: the first `migrator run`, a run resumed after an interruption, a
`migrator retry`. Its figures are kept so that reading or re-running a finished job never
changes them: ``started`` (the first session's start), ``finished`` (when the last session
ended with every file settled), ``active`` (seconds spent in sessions, the duration its rate
is computed over) and, while one runs, ``session`` (its start). The history (a list of JSON
entries) says what each session did and what was changed in between: the destination
(`retry --host`), the rate limit (`limit`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import redis

    from migrator.keys import JobKeys


class Sessions:
    """Mixed into Ledger: the methods on the job's meta hash and history list."""

    client: redis.Redis
    keys: JobKeys

    def meta(self) -> dict[str, float]:
        raise NotImplementedError

    def finished(self) -> bool:
        """The job's last sending session ended with every file settled."""
        return bool(self.client.hexists(self.keys.meta, "finished"))

    @contextlib.contextmanager
    def planning_now(self) -> Iterator[None]:
        """Around planning (`plan`, `run`): more batches may come even when every file
        planned so far is settled (a slow source lists between two batches), so a sending
        process keeps its associations (runtime.py's idle closer). The mark is cleared on
        every way out (done, failed, interrupted) so that an idle sender is never held open
        by a planner that has gone; only a planner killed outright (SIGKILL) leaves it,
        until the job is planned again (`run` resumed) or finishes (``mark_finished``);
        until then idle associations stay open as they did before the idle closer (the
        PACS's idle timeout, or `pause`/`cancel`, still ends them)."""
        self.client.hset(self.keys.meta, "planning", time.time())
        try:
            yield
        finally:
            self.client.hdel(self.keys.meta, "planning")

    def planning(self) -> bool:
        """Planning is listing the job's sources now (see ``planning_now``). A job planned
        before this mark existed has none: taken as not planning, as then."""
        return bool(self.client.hexists(self.keys.meta, "planning"))

    def mark_started(self, now: float | None = None) -> float:
        """A sending session begins (``now``): the job's first start is kept, its end is
        cleared until the session ends. Returns the session's start, for ``mark_finished``.

        Only a session with something to send calls it (`migrator run`): reading a finished
        job again leaves its figures as they were."""
        now = time.time() if now is None else now
        meta = self.meta()
        pipe = self.client.pipeline(transaction=True)
        if "active" not in meta and "finished" in meta and "started" in meta:
            # A job finished before sending time was kept: its one session so far.
            pipe.hset(self.keys.meta, "active", max(0.0, meta["finished"] - meta["started"]))
        pipe.hsetnx(self.keys.meta, "started", now)
        pipe.hset(self.keys.meta, "session", now)
        pipe.hdel(self.keys.meta, "finished")
        pipe.execute()
        return now

    def mark_finished(
        self,
        session_start: float | None = None,
        *,
        complete: bool = True,
        history: dict[str, Any] | None = None,
    ) -> None:
        """A sending session ends: its time is added to the job's sending time (``active``);
        ``complete``: every file has its outcome (the job's ``finished`` stamp). ``history``:
        what to keep about the session in the job's history (its command, destination...)."""
        now = time.time()
        if session_start is None:
            session_start = self.meta().get("session")
        pipe = self.client.pipeline(transaction=True)
        if session_start is not None:
            pipe.hincrbyfloat(self.keys.meta, "active", max(0.0, now - session_start))
            pipe.hdel(self.keys.meta, "session")
        if complete:
            pipe.hset(self.keys.meta, "finished", now)
            pipe.hdel(self.keys.meta, "planning")  # every file settled: nothing to come
        if history is not None:
            entry = {"kind": "session", "started": session_start, "ended": now, **history}
            entry["complete"] = complete
            pipe.rpush(self.keys.history, json.dumps(entry, separators=(",", ":")))
        pipe.execute()

    def add_history(self, kind: str, **entry: Any) -> None:
        """Keep a change made to the job (``destination``, ``limit``...) in its history."""
        record = {"kind": kind, "at": time.time(), **entry}
        self.client.rpush(self.keys.history, json.dumps(record, separators=(",", ":")))

    def history(self) -> list[dict[str, Any]]:
        raw = cast(list[bytes], self.client.lrange(self.keys.history, 0, -1))
        return [cast(dict[str, Any], json.loads(r)) for r in raw]

    def set_config(self, config: dict[str, Any]) -> None:
        """Replace the job's settings (`retry --host`: a new destination for what is left);
        every batch reads them when it starts."""
        self.client.set(self.keys.config, json.dumps(config))


def active_seconds(meta: dict[str, float], now: float) -> float | None:
    """The job's time spent sending, up to ``now`` for a session still running; None for a
    job that never kept it (then its duration is ``finished - started``)."""
    if "active" not in meta and "session" not in meta:
        return None
    active = meta.get("active", 0.0)
    if "session" in meta:
        active += max(0.0, now - meta["session"])
    return active
