"""Fault injection for `migrator scp`: the misbehaving PACS the test suite sends to.

Semantics (also in ``migrator scp --help``; tests pin each rule):

* C-STOREs are numbered 1, 2, 3, ... across all associations, in the order their
  handlers run (associations run in parallel threads, so the numbering between two
  concurrent associations is whatever order they arrive in).
* ``--fail-status S`` answers ``S`` instead of storing: the instance is never written,
  whatever ``S`` is (``0x0000`` thus plays a PACS that acknowledges and keeps nothing).
  Without a selector every C-STORE gets it.
* ``--fail-every N`` selects C-STOREs number N, 2N, 3N, ...
* ``--fail-first K`` is a fault budget shared by all associations: only the first K
  selected C-STOREs get the fault, later ones are stored normally.
* ``--abort-after N`` aborts an association (A-ABORT) when its store N+1 arrives; that
  instance is not stored and the sender gets no response. With ``--fail-first K`` only
  the first K associations that reach store N+1 are aborted, so a sender that reconnects
  eventually succeeds. It cannot be combined with ``--fail-status``/``--fail-every``.
* ``--response-delay MS`` sleeps before answering every C-STORE (after the instance is
  stored or the fault decided), independent of the selectors.
* ``--refuse`` rejects every association: A-ASSOCIATE-RJ result 1 (permanent), source 1
  (service user), reason 1 (no reason given), as DCMTK ``storescp --refuse`` does.
"""

from __future__ import annotations

import enum
import itertools
import threading
import weakref
from dataclasses import dataclass
from typing import NamedTuple

from migrator.errors import ConfigError


class Action(enum.Enum):
    STORE = "store"
    FAIL = "fail"
    ABORT = "abort"


class Decision(NamedTuple):
    action: Action
    #: 1-based number of this C-STORE across all associations.
    number: int
    #: The status to answer for Action.FAIL.
    status: int | None = None


@dataclass(frozen=True, slots=True)
class FaultPlan:
    fail_status: int | None = None
    fail_first: int | None = None
    fail_every: int | None = None
    abort_after: int | None = None
    #: Seconds to sleep before each C-STORE response.
    response_delay: float = 0.0
    refuse: bool = False

    def validate(self) -> None:
        """Raise ConfigError for combinations whose meaning would be a guess."""
        if self.fail_status is not None and not 0 <= self.fail_status <= 0xFFFF:
            raise ConfigError(f"--fail-status 0x{self.fail_status:X} is not a 16-bit status")
        if self.abort_after is not None and (
            self.fail_status is not None or self.fail_every is not None
        ):
            raise ConfigError(
                "--abort-after cannot be combined with --fail-status or --fail-every "
                "(use --fail-first K to abort only the first K associations)"
            )
        if self.fail_status is None and self.abort_after is None:
            selectors = (("--fail-first", self.fail_first), ("--fail-every", self.fail_every))
            for flag, value in selectors:
                if value is not None:
                    raise ConfigError(f"{flag} needs --fail-status (or --abort-after)")
        if self.response_delay < 0:
            raise ConfigError("--response-delay must not be negative")

    @property
    def active(self) -> bool:
        return (
            self.fail_status is not None
            or self.abort_after is not None
            or self.response_delay > 0
            or self.refuse
        )

    def describe(self) -> str:
        """One line for the startup banner, e.g. ``fail-status=0xA700 fail-first=2``."""
        parts: list[str] = []
        if self.refuse:
            parts.append("refuse all associations")
        if self.fail_status is not None:
            parts.append(f"fail-status=0x{self.fail_status:04X}")
        if self.abort_after is not None:
            parts.append(f"abort-after={self.abort_after}")
        if self.fail_first is not None:
            parts.append(f"fail-first={self.fail_first}")
        if self.fail_every is not None:
            parts.append(f"fail-every={self.fail_every}")
        if self.response_delay > 0:
            parts.append(f"response-delay={self.response_delay * 1000:.0f}ms")
        return " ".join(parts) or "none"


class FaultInjector:
    """Decides, per C-STORE, whether to store, answer a fault status or abort.

    Handlers run in one thread per association, so every counter is guarded by a lock.
    """

    def __init__(self, plan: FaultPlan) -> None:
        plan.validate()
        self.plan = plan
        self._lock = threading.Lock()
        #: C-STORE numbers (#1, #2... in the log); next() on a count is atomic
        self._numbers = itertools.count(1)
        self._budget_used = 0
        # Stores seen per association; weak keys so finished associations drop out.
        self._per_assoc: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()

    @property
    def faults_injected(self) -> int:
        with self._lock:
            return self._budget_used

    def _take_budget(self) -> bool:
        if self.plan.fail_first is not None and self._budget_used >= self.plan.fail_first:
            return False
        self._budget_used += 1
        return True

    def on_store(self, assoc: object) -> Decision:
        """Record one C-STORE on ``assoc`` and say what to do with it."""
        plan = self.plan
        if plan.abort_after is None and plan.fail_status is None:
            return Decision(Action.STORE, next(self._numbers))  # no faults: no lock
        with self._lock:
            number = next(self._numbers)
            if plan.abort_after is not None:
                on_assoc = self._per_assoc.get(assoc, 0) + 1
                self._per_assoc[assoc] = on_assoc
                if on_assoc > plan.abort_after and self._take_budget():
                    return Decision(Action.ABORT, number)
                return Decision(Action.STORE, number)
            if plan.fail_status is None:
                return Decision(Action.STORE, number)
            selected = plan.fail_every is None or number % plan.fail_every == 0
            if selected and self._take_budget():
                return Decision(Action.FAIL, number, plan.fail_status)
            return Decision(Action.STORE, number)
