"""Values as text, checked against their VR (PS3.5 6.2) and the file's character set (PS3.5
6.1, PS3.3 C.12.1.1.2).

A value that does not fit (too long, a character the VR does not allow, a character the
file's Specific Character Set cannot encode) is an error: it is never truncated or replaced,
because a silently shortened patient ID is a different patient.
"""

from __future__ import annotations

import re

#: VRs whose values are text (decoded and encoded here); other VRs are left alone.
TEXT_VRS = frozenset(
    {
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "ST",
        "TM",
        "UC",
        "UI",
        "UR",
        "UT",
    }
)
#: Text VRs that use the Specific Character Set; the others are the default repertoire.
CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
#: Single-valued VRs: a backslash is text, not a value separator.
SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})

#: Maximum length of one value, in characters (PS3.5 Table 6.2-1); PN: per component group.
MAX_CHARS = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 8,
    "DS": 16,
    "DT": 26,
    "IS": 12,
    "LO": 64,
    "LT": 10240,
    "PN": 64,
    "SH": 16,
    "ST": 1024,
    "TM": 14,
    "UI": 64,
}
_PATTERNS = {
    "AS": re.compile(r"[0-9]{3}[DWMY]"),
    "CS": re.compile(r"[A-Z0-9 _]*"),
    "DA": re.compile(r"[0-9]{8}"),
    "DS": re.compile(r" *[0-9+\-Ee.]* *"),
    "DT": re.compile(r"[0-9]{4,14}(\.[0-9]{1,6})?([+-][0-9]{4})?"),
    "IS": re.compile(r" *[+-]?[0-9]* *"),
    "TM": re.compile(r"[0-9]{2,6}(\.[0-9]{1,6})?"),
    "UI": re.compile(r"[0-9.]*"),
}
#: Control characters allowed in the long text VRs (PS3.5 6.1.3: LF, FF, CR; and TAB).
_TEXT_CONTROLS = "\t\n\f\r"
#: Control characters other than ESC (which ISO 2022 escape sequences use)
_CONTROLS = re.compile("[\x00-\x1a\x1c-\x1f]")

#: Specific Character Set defined terms with one Python codec (no ISO 2022 code extensions)
CODECS = {
    "": "ascii",
    "ISO_IR 6": "ascii",
    "ISO_IR 100": "latin_1",
    "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4",
    "ISO_IR 144": "iso8859_5",
    "ISO_IR 127": "iso8859_6",
    "ISO_IR 126": "iso8859_7",
    "ISO_IR 138": "iso8859_8",
    "ISO_IR 148": "iso8859_9",
    "ISO_IR 203": "iso8859_15",
    "ISO_IR 13": "shift_jis",
    "ISO_IR 166": "tis_620",
    "ISO_IR 192": "utf_8",
    "GB18030": "gb18030",
    "GBK": "gbk",
}


class ValueProblem(ValueError):
    """Why a value cannot be written (the caller adds file, element and rule)."""


def codec_for(charset: str) -> str:
    """The codec of a Specific Character Set value (as stored: maybe multi-valued)."""
    terms = [t.strip() for t in charset.split("\\")]
    if len(terms) > 1 and not terms[0]:
        terms = terms[1:]  # "\ISO 2022 IR 100"-style: first value empty = default
    if len(terms) == 1 and terms[0] in CODECS:
        return CODECS[terms[0]]
    raise ValueProblem(
        f"Specific Character Set {charset.strip()!r} (code extensions) is not supported by "
        "coercion; supported: " + ", ".join(t for t in CODECS if t)
    )


def decode(value: bytes, vr: str, codec: str) -> str:
    """The text of a value field, padding removed."""
    stripped = value.rstrip(b"\x00") if vr == "UI" else value.rstrip(b"\x00 ")
    try:
        return stripped.decode(codec if vr in CHARSET_VRS else "ascii")
    except UnicodeDecodeError as exc:
        raise ValueProblem(f"the stored value does not decode as {codec}: {exc.reason}") from None


def encode(text: str, vr: str, codec: str) -> bytes:
    """``text`` checked against ``vr`` and encoded (padded to even length: NUL for UI, a space
    otherwise, PS3.5 7.1.1). Raises ``ValueProblem``."""
    check(text, vr)
    use = codec if vr in CHARSET_VRS else "ascii"
    try:
        raw = text.encode(use)
    except UnicodeEncodeError as exc:
        what = "the default repertoire (ASCII)" if use == "ascii" else f"the file's {use}"
        bad = text[exc.start : exc.end]
        raise ValueProblem(
            f"{len(bad)} character(s) cannot be encoded in {what} (Specific Character Set)"
        ) from None
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


def check(text: str, vr: str) -> None:
    """Raise ``ValueProblem`` when ``text`` is not a valid value of ``vr``."""
    values = [text] if vr in SINGLE_VALUED else text.split("\\")
    limit = MAX_CHARS.get(vr)
    pattern = _PATTERNS.get(vr)
    for value in values:
        if _CONTROLS.search(value):
            bad = set(_CONTROLS.findall(value))
            if not (vr in ("LT", "ST", "UT") and bad <= set(_TEXT_CONTROLS)):
                raise ValueProblem(f"a control character is not allowed in {vr}")
        if vr == "PN":
            groups = value.split("=")
            if len(groups) > 3:
                raise ValueProblem("PN has at most 3 component groups")
            longest = max(len(g) for g in groups)
            if longest > 64:
                raise ValueProblem(
                    f"too long for PN: {longest} characters in a component group, at most 64"
                )
            continue
        if limit is not None and len(value) > limit:
            raise ValueProblem(f"too long for {vr}: {len(value)} characters, at most {limit}")
        if pattern is not None and value and not pattern.fullmatch(value):
            raise ValueProblem(f"not a valid {vr} value (PS3.5 Table 6.2-1)")
