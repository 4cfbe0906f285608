"""Applying the rules to one file's header region.

Pure: the same region and rules give the same result in every process (mapping tables are
read whole from the rules' files, nothing is learned while sending), so a value maps to the
same output everywhere in a fleet. What changed is recorded as the names of the rules that
changed something and a digest of the changes: never the values (patient data).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from re import error as re_error

from migrator.coerce.elements import Dataset, Element
from migrator.coerce.errors import CoercionError, CoercionSkipped
from migrator.coerce.paths import ElementPath, Holder
from migrator.coerce.rules import Condition, Rule, RuleSet
from migrator.coerce.vr import TEXT_VRS, ValueProblem, decode, encode

#: A rule's new value from the old one (None: leave the element as it is)
_NewOf = Callable[[str], "str | None"]


@dataclass(frozen=True, slots=True)
class Change:
    """One element a rule changed, as text (``--dry-run``'s before/after; never reported
    or logged by a sender). ``None``: absent before (or not text: ``before_note`` says what
    it was, a sequence or a binary value) / deleted after."""

    rule: str
    line: int
    element: str
    before: str | None
    after: str | None
    before_note: str = ""
    #: The elements each value was read from, this one included (a ``copy``'s source, a
    #: ``map``'s match, the rule's conditions, and what earlier rules made of them): a
    #: dry run shows a value in clear only when every one of them may be shown
    before_from: tuple[str, ...] = ()
    after_from: tuple[str, ...] = ()


@dataclass(slots=True)
class Applied:
    """What the rules did to one file."""

    #: Names of the rules that changed something, in order
    fired: list[str] = field(default_factory=list)
    changed: int = 0
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    #: Each change with its values, when asked for (a dry run); None when sending
    trace: list[Change] | None = None
    #: With ``trace``: element -> the elements its value now comes from, for the elements
    #: a rule wrote (the others come from themselves)
    origins: dict[str, frozenset[str]] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()[:16]

    def note(self) -> str:
        return (
            f"coerced by {', '.join(self.fired)}: {self.changed} element(s) changed "
            f"(digest {self.digest})"
        )


def apply_rules(rules: RuleSet, ds: Dataset, codec: str, *, trace: bool = False) -> Applied:
    """Change ``ds`` in place as ``rules`` say. Raises ``CoercionError`` (naming element and
    rule) or ``CoercionSkipped``. ``trace``: keep each change's values (``Applied.trace``)."""
    done = Applied(trace=[] if trace else None)
    for rule in rules.rules:
        ctx = _Context(rule, codec, done)
        if all(ctx.holds(c, ds) for c in rule.when) and ctx.run(ds):
            done.fired.append(rule.name)
    return done


class _Context:
    def __init__(self, rule: Rule, codec: str, done: Applied) -> None:
        self.rule = rule
        self.codec = codec
        self.done = done

    def fail(self, path: ElementPath | str, why: str) -> CoercionError:
        what = path.text if isinstance(path, ElementPath) else path
        return CoercionError(f"{what} (rule {self.rule.name}, line {self.rule.line}): {why}")

    def text(self, path: ElementPath, element: Element) -> str:
        if element.items is not None:
            return "(sequence)" if element.items else ""
        vr = element.vr if element.vr != "UN" else path.vr
        if vr not in TEXT_VRS:
            raise self.fail(path, f"its VR {vr} is not text")
        try:
            return decode(element.value, vr, self.codec)
        except ValueProblem as exc:
            raise self.fail(path, str(exc)) from None

    def values(self, path: ElementPath, ds: Dataset) -> list[str]:
        if not path.nested:  # the common case, without a holder
            element = ds.get(path.tag)
            return [self.text(path, element)] if element is not None else []
        out = []
        for holder in path.holders(ds):
            element = holder.ds.get(path.tag)
            if element is not None:
                out.append(self.text(path, element))
        return out

    def holds(self, cond: Condition, ds: Dataset) -> bool:
        found = self.values(cond.path, ds)
        if cond.values is None:
            return not any(found)
        if cond.pattern is not None:
            return any(cond.pattern.search(v) for v in found)
        return any(v in cond.values for v in found)

    def write(self, holder: Holder, path: ElementPath, new: str | None) -> bool:
        """Set (or with None delete) the element; True when that changed something."""
        ds = holder.ds
        old = ds.get(path.tag)
        if new is None:
            if not ds.delete(path.tag):
                return False
            if self.done.trace is not None:
                self.trace(path, old, None)
            self.record(path, old.raw if old is not None else None, None)
            holder.changed()
            return True
        if old is not None and old.items is None and self.text(path, old) == new:
            return False
        vr = old.vr if old is not None and old.vr not in ("UN", "SQ") else path.vr
        try:
            value = encode(new, vr, self.codec)
        except ValueProblem as exc:
            raise self.fail(path, str(exc)) from None
        ds.put(Element(path.tag, vr, value))
        if self.done.trace is not None:
            self.trace(path, old, new)
        self.record(path, old.raw if old is not None else None, value)
        holder.changed()
        return True

    def trace(self, path: ElementPath, old: Element | None, new: str | None) -> None:
        before, note = None, ""
        if old is not None and old.items is not None:
            note = f"(sequence of {len(old.items)} item(s))"
        elif old is not None:
            try:
                before = self.text(path, old)
            except CoercionError:  # delete works on any VR: its size, not its value
                note = f"({len(old.value)} bytes of {old.vr})"
        assert self.done.trace is not None
        rule = self.rule
        was = self.origin(path.text)
        now = self.reads(path) | {path.text}
        self.done.origins[path.text] = now
        self.done.trace.append(
            Change(
                rule.name,
                rule.line,
                path.text,
                before,
                new,
                note,
                tuple(sorted(was)),
                tuple(sorted(now)),
            )
        )

    def origin(self, element: str) -> frozenset[str]:
        return self.done.origins.get(element, frozenset({element}))

    def reads(self, target: ElementPath) -> frozenset[str]:
        """The elements (as earlier rules left them) the rule's new value for ``target``
        depends on: its conditions, a copy's source, a map's match, and for the rules that
        edit the value in place the target itself. (``set``'s value is the rule's own, but
        whether it is written says what its conditions found.)"""
        rule = self.rule
        paths = [c.path.text for c in rule.when]
        if rule.source is not None:
            paths.append(rule.source.text)
        if rule.table is not None:
            paths += [p.text for p in rule.table.match]
        if rule.op in ("replace", "prefix", "suffix", "regex"):
            paths.append(target.text)
        out: frozenset[str] = frozenset()
        for p in paths:
            out |= self.origin(p)
        return out

    def record(self, path: ElementPath, old: bytes | None, new: bytes | None) -> None:
        h = self.done._hash
        h.update(path.text.encode() + b"\0" + (old or b"") + b"\0" + (new or b"\1") + b"\0")
        self.done.changed += 1

    def run(self, ds: Dataset) -> bool:
        rule = self.rule
        if rule.op == "map":
            return self.map(ds)
        target = rule.target
        assert target is not None
        if rule.op == "copy":
            assert rule.source is not None
            found = self.values(rule.source, ds)
            if not found:
                return False
            return self.each(ds, target, lambda _old: found[0], create=True)
        if rule.op == "delete":
            changed = False
            for holder in list(target.holders(ds)):
                changed |= self.write(holder, target, None)
            return changed
        if rule.op == "set":
            return self.each(ds, target, lambda _old: rule.value, create=True)
        if rule.op == "replace":
            return self.each(ds, target, lambda old: rule.value if old == rule.old else None)
        if rule.op == "prefix":
            return self.each(ds, target, lambda old: rule.value + old if old else None)
        if rule.op == "suffix":
            return self.each(ds, target, lambda old: old + rule.value if old else None)
        assert rule.op == "regex" and rule.pattern is not None
        pattern = rule.pattern
        try:
            return self.each(ds, target, lambda old: pattern.sub(rule.value, old))
        except (re_error, IndexError) as exc:  # a replacement naming a group not matched
            raise self.fail(target, f"the replacement cannot be applied: {exc}") from None

    def each(
        self, ds: Dataset, target: ElementPath, new_of: _NewOf, *, create: bool = False
    ) -> bool:
        changed = False
        for holder in list(target.holders(ds)):
            element = holder.ds.get(target.tag)
            if element is None and not create:
                continue
            new = new_of(self.text(target, element) if element is not None else "")
            if new is not None:
                changed |= self.write(holder, target, new)
        return changed

    def map(self, ds: Dataset) -> bool:
        table = self.rule.table
        assert table is not None
        key = tuple((self.values(p, ds) or [""])[0].strip() for p in table.match)
        new = table.rows.get(key)
        if new is None:
            names = ", ".join(p.text for p in table.match)
            why = f"the file's {names} is not in the table {table.path}"
            if self.rule.missing == "fail":
                raise self.fail(names, f"{why} (missing: fail)")
            if self.rule.missing == "skip":
                raise CoercionSkipped(
                    f"not sent: {why} (rule {self.rule.name}, line {self.rule.line}, missing: skip)"
                )
            return False
        changed = False
        for path, value in zip(table.write, new, strict=True):
            for holder in list(path.holders(ds)):
                changed |= self.write(holder, path, value)
        return changed
