"""Presentation-context planning: exact syntaxes first, fallbacks, and the 128 limit."""

from __future__ import annotations

from migrator.contexts import MAX_CONTEXTS, plan_profiles
from migrator.dicomfile import EXPLICIT_LE, IMPLICIT_LE

J2K = "1.2.840.10008.1.2.4.90"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def _syntaxes(profile, sop):  # type: ignore[no-untyped-def]
    return [c.transfer_syntaxes for c in profile.contexts if c.abstract_syntax == sop]


def test_each_file_syntax_gets_its_own_context_plus_an_uncompressed_fallback() -> None:
    [profile] = plan_profiles([(CT, J2K), (CT, EXPLICIT_LE), (MR, IMPLICIT_LE)])
    assert _syntaxes(profile, CT) == [(EXPLICIT_LE,), (J2K,), (EXPLICIT_LE, IMPLICIT_LE)]
    # Implicit VR LE is the default syntax every SCP must accept: no fallback needed.
    assert _syntaxes(profile, MR) == [(IMPLICIT_LE,)]


def test_context_ids_are_odd_and_unique() -> None:
    [profile] = plan_profiles([(CT, J2K), (MR, EXPLICIT_LE)])
    ids = [c.context_id for c in profile.contexts]
    assert len(set(ids)) == len(ids)
    assert all(i % 2 == 1 and 1 <= i <= 255 for i in ids)


def test_more_than_128_pairs_are_split_and_every_class_keeps_its_fallback() -> None:
    classes = [f"1.2.3.{n}" for n in range(150)]
    pairs = [(c, EXPLICIT_LE) for c in classes] + [(c, J2K) for c in classes[:20]]
    profiles = plan_profiles(pairs)
    assert len(profiles) >= 3
    seen: set[str] = set()
    for p in profiles:
        assert len(p.contexts) <= MAX_CONTEXTS
        assert max(c.context_id for c in p.contexts) <= 255
        assert not (p.sop_classes & seen), "a SOP class must live in exactly one profile"
        seen |= p.sop_classes
        for sop in p.sop_classes:
            assert (EXPLICIT_LE, IMPLICIT_LE) in _syntaxes(p, sop)
    assert seen == set(classes)


def test_forced_syntax_is_the_only_one_proposed() -> None:
    [profile] = plan_profiles([(CT, J2K), (MR, EXPLICIT_LE)], forced_syntax=IMPLICIT_LE)
    assert _syntaxes(profile, CT) == [(IMPLICIT_LE,)]
    assert _syntaxes(profile, MR) == [(IMPLICIT_LE,)]
