"""Element paths of the rules: a keyword or tag, inside sequences by ``Sequence[i].Keyword``.

PatientID                     a top-level element (keyword)
(0010,0021) or 00100021       the same by tag
OtherPatientIDsSequence[*].IssuerOfPatientID     in every item ([*] may be left out)
RequestAttributesSequence[0].AccessionNumber     in the first item only
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from migrator.coerce.dictionary import tag_for_keyword
from migrator.coerce.elements import PIXEL_DATA, Dataset, Element, dictionary_vr

_STEP = re.compile(
    r"\s*(?:\((?P<g>[0-9A-Fa-f]{4}),(?P<e>[0-9A-Fa-f]{4})\)|(?P<hex>[0-9A-Fa-f]{8})|"
    r"(?P<kw>[A-Za-z][A-Za-z0-9]*))(?:\[(?P<i>\*|[0-9]+)\])?\s*"
)


@dataclass(frozen=True, slots=True)
class Step:
    tag: int
    #: Which item of the sequence (None: every item)
    index: int | None


@dataclass(frozen=True, slots=True)
class ElementPath:
    text: str
    #: The sequences on the way, outermost first
    steps: tuple[Step, ...]
    tag: int
    vr: str

    @property
    def top(self) -> int:
        """The top-level tag this path starts from (what the header region must reach)."""
        return self.steps[0].tag if self.steps else self.tag

    @property
    def nested(self) -> bool:
        return bool(self.steps)

    def holders(self, ds: Dataset) -> Iterator[Holder]:
        """The datasets that hold (or would hold) the final element."""
        if not self.steps:
            return iter((Holder(ds, ()),))  # top level: the common case, no generator
        return _holders(ds, self.steps, ())


class Holder:
    """A dataset the path reaches, and the sequences above it (to mark them changed).
    (A plain class: a frozen dataclass costs microseconds per file to build.)"""

    __slots__ = ("chain", "ds")

    def __init__(self, ds: Dataset, chain: tuple[tuple[Dataset, Element], ...]) -> None:
        self.ds = ds
        self.chain = chain

    def changed(self) -> None:
        for parent, sequence in self.chain:
            parent.put(sequence)


def _holders(
    ds: Dataset, steps: tuple[Step, ...], chain: tuple[tuple[Dataset, Element], ...]
) -> Iterator[Holder]:
    if not steps:
        yield Holder(ds, chain)
        return
    step, rest = steps[0], steps[1:]
    sequence = ds.get(step.tag)
    if sequence is None or sequence.items is None:
        return  # no such sequence: nothing to change inside it (sequences are not created)
    items = sequence.items
    chosen = items if step.index is None else items[step.index : step.index + 1]
    for item in chosen:
        yield from _holders(item, rest, (*chain, (ds, sequence)))


def tag_of(word: str) -> int:
    """A keyword's tag, or ValueError."""
    tag = tag_for_keyword(word)
    if tag is None:
        raise ValueError(f"{word!r} is not a DICOM keyword (give a tag as (gggg,eeee))")
    return int(tag)


def parse_path(text: str) -> ElementPath:
    """Raises ValueError with the reason for a path that cannot be used."""
    parts = text.split(".")
    steps: list[Step] = []
    for n, part in enumerate(parts):
        m = _STEP.fullmatch(part)
        if m is None:
            raise ValueError(f"{text!r} is not an element path (Keyword, (gggg,eeee), Seq[*].X)")
        if m["kw"]:
            tag = tag_of(m["kw"])
        elif m["hex"]:
            tag = int(m["hex"], 16)
        else:
            tag = int(m["g"] + m["e"], 16)
        last = n == len(parts) - 1
        if not last:
            if dictionary_vr(tag) not in ("SQ", "UN"):
                raise ValueError(f"{part.strip()} in {text!r} is not a sequence")
            index = None if m["i"] in (None, "*") else int(m["i"])
            steps.append(Step(tag, index))
        elif m["i"] is not None:
            raise ValueError(f"{text!r}: an item index belongs to a sequence, not the element")
        else:
            final = tag
    top = steps[0].tag if steps else final
    if top >= PIXEL_DATA:
        raise ValueError(f"{text!r}: elements from Pixel Data on are streamed, never coerced")
    if final & 0xFFFF == 0:
        raise ValueError(f"{text!r} is a Group Length element")
    if final >> 16 == 0x0002 or top >> 16 == 0x0002:
        raise ValueError(f"{text!r} is in the File Meta group (0002), which is not sent")
    return ElementPath(text.strip(), tuple(steps), final, dictionary_vr(final))
