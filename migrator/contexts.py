"""Presentation-context planning (PS3.8 §9.3.2.2, PS3.7 Annex D).

For each SOP class we propose one context per transfer syntax the files actually use (so a
file can be streamed exactly as stored when the SCP accepts its syntax) plus, unless the
files are all Implicit VR LE, a fallback context offering Explicit then Implicit VR LE (the
target of lossless re-encoding when the SCP refuses a compressed syntax).

An association carries at most 128 contexts (ids 1..255, odd). A job with more (SOP class,
syntax) pairs is split into several *profiles*, each negotiated on its own associations.
All contexts of one SOP class stay in the same profile, so a file always finds both its
exact context and its fallback on the association it is sent on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from migrator.dicomfile import EXPLICIT_LE, IMPLICIT_LE
from migrator.dul.dimse import VERIFICATION_SOP_CLASS
from migrator.dul.pdu import ProposedContext

MAX_CONTEXTS = 128
_FALLBACK = (EXPLICIT_LE, IMPLICIT_LE)


@dataclass(frozen=True, slots=True)
class Profile:
    """One association's worth of proposed contexts."""

    index: int
    contexts: tuple[ProposedContext, ...]
    sop_classes: frozenset[str]


def _contexts_for(
    sop_class: str, syntaxes: Iterable[str], forced: str | None
) -> list[tuple[str, tuple[str, ...]]]:
    if forced:
        return [(sop_class, (forced,))]
    exact = sorted(set(syntaxes))
    out: list[tuple[str, tuple[str, ...]]] = [(sop_class, (ts,)) for ts in exact]
    if set(exact) != {IMPLICIT_LE}:
        out.append((sop_class, _FALLBACK))
    return out


def plan_profiles(
    pairs: Iterable[tuple[str, str]],
    *,
    forced_syntax: str | None = None,
    max_contexts: int = MAX_CONTEXTS,
) -> list[Profile]:
    """Group the (SOP class, transfer syntax) pairs of a job into association profiles.

    ``forced_syntax`` (``--transfer-syntax``) proposes only that syntax for every class.
    Each profile also proposes Verification so the association can be checked with C-ECHO.
    """
    by_class: dict[str, set[str]] = {}
    for sop_class, ts in pairs:
        by_class.setdefault(sop_class, set()).add(ts)
    budget = max_contexts - 1  # one slot for Verification
    profiles: list[list[tuple[str, tuple[str, ...]]]] = [[]]
    for sop_class in sorted(by_class):
        wanted = _contexts_for(sop_class, by_class[sop_class], forced_syntax)
        if len(profiles[-1]) + len(wanted) > budget:
            profiles.append([])
        profiles[-1].extend(wanted[:budget])
    result = []
    for index, entries in enumerate(p for p in profiles if p):
        contexts = [ProposedContext(1, VERIFICATION_SOP_CLASS, (IMPLICIT_LE,))]
        for n, (sop_class, syntaxes) in enumerate(entries, start=1):
            contexts.append(ProposedContext(2 * n + 1, sop_class, syntaxes))
        result.append(Profile(index, tuple(contexts), frozenset(sop for sop, _ in entries)))
    if not result:
        result.append(
            Profile(0, (ProposedContext(1, VERIFICATION_SOP_CLASS, (IMPLICIT_LE,)),), frozenset())
        )
    return result
