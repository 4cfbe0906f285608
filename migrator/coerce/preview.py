"""``--dry-run`` with ``--coerce``: what the rules would do to a sample of the files.

Nothing is sent and nothing is planned: a sample of the sources' files is read, each file
coerced exactly as a sender would (the same checks and errors), and every changed element
shown before and after, with the rule that changed it.

**The sample** is ``--sample N`` files (default 20) drawn uniformly from the whole listing
(reservoir sampling with a fixed seed: the same listing gives the same sample, and a
folder per patient does not fill it with the first patient), shown in listing order. The
whole listing is walked (as a dry run's inventory is); only the sampled files are read.

**Values are masked** unless ``--show-phi``: a value is shown as its length and a short
keyed digest, ``<6 chars #3f2a91>``. The digest's key is drawn anew by each command, so the
same value has the same digest within one output (a mapping that sends two IDs to one
shows it) but cannot be looked up in a table of digests of every possible 6-digit ID. Only
values that come from elements in ``CLEAR`` alone (equipment and kind of acquisition, never
about the patient) are shown as they are: a value written into a ``CLEAR`` element is masked
when the rule read another element for it (a ``copy`` of PatientName into Manufacturer, a
``map`` matched on PatientID, a rule with a condition on one; ``Change.after_from``). Every
other element, a private one included, is masked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from migrator.coerce.apply import Change
from migrator.coerce.errors import CoercionError, CoercionSkipped
from migrator.dicomfile import DicomHeader
from migrator.errors import MigratorError
from migrator.sources.base import Source, SourceItem

#: Files sampled when ``--sample`` is not given
DEFAULT_SAMPLE = 20
#: The fixed seed of the reservoir: one listing, one sample
SEED = 18
#: Elements whose values are shown unmasked: they describe the equipment or the kind of
#: acquisition, never the patient (keywords; everything else is masked)
CLEAR = frozenset(
    {
        "Modality",
        "BodyPartExamined",
        "ImageType",
        "Manufacturer",
        "ManufacturerModelName",
        "ConversionType",
        "Laterality",
        "ViewPosition",
        "PhotometricInterpretation",
        "SeriesNumber",
        "InstanceNumber",
        "AcquisitionNumber",
    }
)

#: States of a sampled file
COERCED, UNCHANGED, SKIPPED, FAILED, NOT_SENDABLE = (
    "coerced",
    "unchanged",
    "skipped",
    "failed",
    "not sendable",
)


@dataclass(slots=True)
class Sampled:
    uri: str
    state: str
    #: Why skipped / failed (names element and rule; never a value)
    reason: str = ""
    changes: list[Change] = field(default_factory=list)


@dataclass(slots=True)
class Preview:
    rules: str
    listed: int
    show_phi: bool
    files: list[Sampled] = field(default_factory=list)
    #: Sources that could not be listed (their error)
    unlisted: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for f in self.files if f.state == FAILED)

    @property
    def exit_status(self) -> int:
        """0: every sampled file coerces (or is left as it is, or skipped by a rule); 1: a
        rule fails on one of them (the file would fail)."""
        return 1 if self.failed else 0


def reservoir(
    sources: Iterable[Source], n: int, seed: int = SEED
) -> tuple[list[tuple[Source, SourceItem]], int, list[str]]:
    """``n`` items drawn uniformly from every source's listing (Algorithm R), in listing
    order; how many were listed; the sources that could not be listed."""
    rng = random.Random(seed)
    kept: list[tuple[int, Source, SourceItem]] = []
    seen = 0
    unlisted: list[str] = []
    for source in sources:
        try:
            for item in source.iter_items():
                if len(kept) < n:
                    kept.append((seen, source, item))
                else:
                    j = rng.randrange(seen + 1)
                    if j < n:
                        kept[j] = (seen, source, item)
                seen += 1
        except MigratorError as exc:
            unlisted.append(f"{getattr(source, 'uri', None) or source!r}: {exc}")
    kept.sort(key=lambda k: k[0])
    return [(s, i) for _, s, i in kept], seen, unlisted


def preview(
    sources: Iterable[Source], rules_path: str | None, n: int, *, show_phi: bool = False
) -> Preview:
    """Coerce a sample of ``sources`` as a sender would (no rules: files go unchanged)."""
    from migrator.coerce.coercer import Coercer
    from migrator.coerce.rules import CHECKED, load_rules
    from migrator.sources.inspect import inspect_item, refusal

    coercer = None
    if rules_path:
        rules = next((r for (p, _), r in CHECKED.items() if p == rules_path), None)
        coercer = Coercer(rules or load_rules(rules_path))
    sample, listed, unlisted = reservoir(sources, n)
    out = Preview(rules_path or "", listed, show_phi, unlisted=unlisted)
    for source, item in sample:
        header = inspect_item(source, item)
        problem = refusal(header)
        if problem is not None:
            out.files.append(Sampled(item.uri, NOT_SENDABLE, problem[1]))
            continue
        assert isinstance(header, DicomHeader)
        if coercer is None:
            out.files.append(Sampled(item.uri, UNCHANGED))
            continue
        try:
            with source.fetch(item) as payload:
                _, _, applied = coercer.preview(header, payload)
        except CoercionSkipped as exc:
            out.files.append(Sampled(item.uri, SKIPPED, str(exc)))
            continue
        except CoercionError as exc:
            out.files.append(Sampled(item.uri, FAILED, str(exc)))
            continue
        except MigratorError as exc:  # the file cannot be read now (S3, WADO-RS)
            out.files.append(Sampled(item.uri, NOT_SENDABLE, str(exc)))
            continue
        changes = applied.trace or []
        out.files.append(Sampled(item.uri, COERCED if changes else UNCHANGED, "", changes))
    return out


class Masker:
    """Values as shown: in clear for ``CLEAR`` elements or with ``--show-phi``, else as
    length and keyed digest."""

    def __init__(self, show_phi: bool, key: bytes | None = None) -> None:
        self.show_phi = show_phi
        self.key = key if key is not None else secrets.token_bytes(16)

    def __call__(
        self,
        element: str,
        value: str | None,
        *,
        deleted: bool = False,
        note: str = "",
        read: Iterable[str] = (),
    ) -> str:
        """``read``: the elements the value came from besides ``element`` (a copy's source,
        a condition's element...): it is in clear only if they all are."""
        if value is None:
            return note or ("(deleted)" if deleted else "(absent)")
        if self.show_phi or all(_keyword(e) in CLEAR for e in (element, *read)):
            return repr(value)
        if not value:
            return "<empty>"
        digest = hmac.new(self.key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:6]
        return f"<{len(value)} chars #{digest}>"

    def before(self, c: Change) -> str:
        return self(c.element, c.before, note=c.before_note, read=c.before_from)

    def after(self, c: Change) -> str:
        return self(c.element, c.after, deleted=True, read=c.after_from)


def _keyword(element: str) -> str:
    """``Seq[*].Manufacturer`` -> ``Manufacturer``."""
    return element.split(".")[-1]


def render_text(p: Preview, masker: Masker | None = None) -> str:
    mask = masker or Masker(p.show_phi)
    rules = f"--coerce {p.rules}" if p.rules else "no --coerce rules (files go as they are)"
    how = "values shown in clear (--show-phi)" if p.show_phi else "values masked"
    lines = [
        f"Dry run of {rules}: {len(p.files)} of {p.listed} listed file(s) sampled "
        f"(uniformly, fixed seed); {how}. Nothing is sent, nothing is planned."
    ]
    lines += [f"  cannot list {u}" for u in p.unlisted]
    for f in p.files:
        if f.state == COERCED:
            rules_fired = ", ".join(dict.fromkeys(c.rule for c in f.changes))
            lines.append(f"{f.uri}: coerced by {rules_fired}")
            width = max(len(c.element) for c in f.changes)
            for c in f.changes:
                before, after = mask.before(c), mask.after(c)
                lines.append(
                    f"  {c.element:<{width}}  {before} -> {after}  (rule {c.rule}, line {c.line})"
                )
        elif f.state == UNCHANGED:
            lines.append(f"{f.uri}: unchanged (no rule changes it; sent as it is)")
        elif f.state == FAILED:
            lines.append(f"{f.uri}: WOULD FAIL: {f.reason.removeprefix('not sent: ')}")
        else:
            lines.append(f"{f.uri}: {f.state}: {f.reason}")
    counts = Counter(f.state for f in p.files)
    summary = ", ".join(f"{counts[s]} {s}" for s in _STATES if counts[s])
    lines.append(f"Sample: {summary or 'no file'}.")
    if p.failed:
        lines.append(f"✗ the rules fail on {p.failed} sampled file(s): fix the rules or tables")
    return "\n".join(lines)


_STATES = (COERCED, UNCHANGED, SKIPPED, FAILED, NOT_SENDABLE)


def as_dict(p: Preview, masker: Masker | None = None) -> dict[str, Any]:
    mask = masker or Masker(p.show_phi)
    counts = Counter(f.state for f in p.files)
    return {
        "rules": p.rules or None,
        "listed": p.listed,
        "sampled": len(p.files),
        "masked": not p.show_phi,
        "unlisted": p.unlisted,
        "totals": {s: counts[s] for s in _STATES},
        "files": [
            {
                "uri": f.uri,
                "state": f.state,
                "reason": f.reason,
                "changes": [
                    {
                        "element": c.element,
                        "rule": c.rule,
                        "line": c.line,
                        "before": mask.before(c),
                        "after": mask.after(c),
                    }
                    for c in f.changes
                ],
            }
            for f in p.files
        ],
    }


def render_json(p: Preview) -> str:
    return json.dumps(as_dict(p), indent=2)
