"""Kept C-GET / C-MOVE associations (migrator/sources/getpool.py): when a pool goes away.

Each case runs in a child process: the failure it guards against is a deadlock on one of
``threading``'s own locks, which would hang every later test of this process too.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A pool holding one idle association whose release, like pynetdicom's, waits for a thread
# of the association to end (Association.release -> kill -> stop_dul).
PRELUDE = textwrap.dedent(
    """
    import gc, sys, threading, time
    from types import SimpleNamespace
    from migrator.sources import getpool

    getpool.IDLE_S = 60.0  # no reaper release during the test

    class FakeAssociation:
        is_established = True
        accepted_contexts = [SimpleNamespace(abstract_syntax="1.2.3")]

        def release(self):
            ender = threading.Thread(target=lambda: None)
            ender.start()
            ender.join()
            self.is_established = False
            # One write a line: the releasing thread and the exit may release at once.
            sys.stdout.write(f"released on {threading.current_thread().name}\\n")
            sys.stdout.flush()

        def abort(self):
            print("aborted", flush=True)

    def kept_pool():
        pool = getpool.GetPool(11)
        with pool.lease(["1.2.3"], False, lambda offer, wildcard: FakeAssociation()):
            pass
        assert len(pool._idle) == 1
        return pool
    """
)


def _child(body: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child process hung (a deadlock): {exc.stdout!r}")


def test_a_collected_pool_releases_nothing_on_the_collecting_thread() -> None:
    """The garbage collector may run a dropped pool's finalizer where this thread holds
    threading's lock of live threads (inside threading.enumerate(), as pynetdicom's
    connection_timeout setter calls it). A release there never ends: the association's
    thread cannot end without that lock. The pool hands its association over instead."""
    done = _child(
        """
        pool = kept_pool()
        with threading._active_limbo_lock:  # what threading.enumerate() holds
            del pool
            gc.collect()
        sys.stdout.write("collected\\n")
        deadline = time.monotonic() + 10
        while getpool._LEFT.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        """
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "collected" in lines, lines  # not hung in the collection
    assert "released on migrator-cget-left" in lines, lines


def test_idle_associations_are_released_at_exit() -> None:
    """A pool still alive at exit, and one collected just before, both end their
    associations with an A-RELEASE (not a connection dropped by the process's end)."""
    done = _child(
        """
        alive = kept_pool()
        dropped = kept_pool()
        del dropped
        gc.collect()
        sys.stdout.write("exiting\\n")
        """
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "exiting" in lines, lines
    assert sum(line.startswith("released on") for line in lines) == 2, lines
