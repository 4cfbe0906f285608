"""The data dictionary (keyword -> tag, tag -> VR) without importing pydicom.

``import pydicom`` costs 0.3-0.4 s of a sender's start (measured on the 2-core machine under
load; bench/coerce_bench.py): more than coercing a thousand tiny files. Its dictionary is one
plain module of literals (``pydicom/_dicom_dict.py``, pydicom pinned in pyproject.toml), read
here on its own (~15 ms); pydicom itself only if that file is not where it should be.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any


@functools.cache
def _entries() -> dict[int, tuple[str, str, str, str, str]]:
    spec = importlib.util.find_spec("pydicom")  # finds the package without importing it
    locations = spec.submodule_search_locations if spec is not None else None
    if locations:
        path = os.path.join(next(iter(locations)), "_dicom_dict.py")
        own = importlib.util.spec_from_file_location("_migrator_dicom_dict", path)
        if own is not None and own.loader is not None and os.path.exists(path):
            module = importlib.util.module_from_spec(own)
            own.loader.exec_module(module)
            table: Any = module.DicomDictionary
            return dict(table)
    from pydicom._dicom_dict import DicomDictionary

    return dict(DicomDictionary)


@functools.cache
def _keywords() -> dict[str, int]:
    return {entry[4]: tag for tag, entry in _entries().items() if entry[4]}


def tag_for_keyword(keyword: str) -> int | None:
    return _keywords().get(keyword)


def vr_of(tag: int) -> str:
    """The dictionary VR of ``tag``; "UN" when unknown (private, repeating groups)."""
    entry = _entries().get(tag)
    if entry is None:
        return "UN"
    # Ambiguous entries ("US or SS", "OB or OW"): the first; text VRs are never ambiguous.
    return entry[0].split(" ")[0]
