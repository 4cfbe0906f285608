"""Freezing the heap (migrator/heap.py): garbage is collected first, and only processes that
are ours freeze (the `store` command, workers, `run`), never a library user's ``send()``."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from migrator import heap, synth
from migrator.cli import main
from migrator.settings import Settings
from migrator.store import StoreScu


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


@pytest.fixture
def freezes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The process's freezes (each: how many objects it froze), with ``heap`` set as in a
    fresh process; the test process's heap is unfrozen afterwards."""
    calls: list[int] = []
    real_freeze = gc.freeze

    def counted() -> None:
        real_freeze()
        calls.append(gc.get_freeze_count())

    monkeypatch.setattr(heap, "_frozen", False)
    monkeypatch.setattr(gc, "freeze", counted)
    try:
        yield calls
    finally:
        gc.unfreeze()


def test_cyclic_garbage_is_collected_before_the_heap_is_frozen(freezes: list[int]) -> None:
    gc.disable()  # (else a collection could free the cycle before the freeze is asked)
    try:
        garbage = _Node()
        gone = weakref.ref(garbage)
        del garbage
        assert gone() is not None  # a cycle: still there, waiting for the collector
        heap.freeze_set_up()
        assert len(freezes) == 1
        assert gone() is None, "a garbage cycle was frozen: it would never be freed"
    finally:
        gc.enable()


def test_the_library_s_send_leaves_its_caller_s_heap_alone(
    freezes: list[int], free_port: int
) -> None:
    """``StoreScu.send()`` is the public Python API: freezing there froze a library user's
    whole heap at their first send."""
    scu = StoreScu(Settings("127.0.0.1", port=free_port, called_ae="NOBODY"))
    result = scu.send()  # nothing added: nothing to send, nothing sent
    assert result.planned == 0
    assert freezes == []


def test_the_store_command_freezes_once_before_sending(
    freezes: list[int], tmp_path: Path, free_port: int
) -> None:
    """The command's process is ours: it freezes once, when the files are inspected (what
    bench/coerce_bench.py measured), even when nothing can then be sent (a closed port)."""
    synth.write_corpus(tmp_path / "in", count=3, size="tiny", seed=5)
    args = ["store", "--host", "127.0.0.1", "--port", str(free_port), "--called-ae", "NOBODY"]
    result = CliRunner().invoke(main, [*args, "--dir", str(tmp_path / "in"), "-q"])
    assert result.exit_code != 0, result.output  # nothing listens there
    assert len(freezes) == 1, result.output
