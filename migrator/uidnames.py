"""Names of DICOM UIDs (``CT Image Storage``…) without importing pydicom.

``pydicom.uid.UID(uid).name`` imports the whole of pydicom (~0.3–0.5 s here), which every
`store --report` and `run` paid at the very end just to name a few SOP classes. The names
come from the same table: pydicom's generated ``_uid_dict.py``, a single dict literal,
loaded on its own (~5 ms) from wherever pydicom is installed.
"""

from __future__ import annotations

import functools
import importlib.util
import os


@functools.cache
def _table() -> dict[str, tuple[str, ...]]:
    spec = importlib.util.find_spec("pydicom")  # finds the package without running it
    if spec is None or spec.origin is None:
        return {}
    path = os.path.join(os.path.dirname(spec.origin), "_uid_dict.py")
    # Loaded as a module of its own (pydicom's compiled copy in __pycache__ is reused).
    table_spec = importlib.util.spec_from_file_location("migrator._pydicom_uid_dict", path)
    if table_spec is None or table_spec.loader is None:
        return {}
    module = importlib.util.module_from_spec(table_spec)
    try:
        table_spec.loader.exec_module(module)
    except OSError:
        return {}
    table = getattr(module, "UID_dictionary", None)
    return table if isinstance(table, dict) else {}


def name(uid: str) -> str:
    """The registered name of ``uid``; ``uid`` itself when it has none (private UIDs)."""
    entry = _table().get(uid)
    if entry:
        return str(entry[0])
    if not _table():  # pydicom's table not found where expected: ask pydicom
        from pydicom.uid import UID

        return str(UID(uid).name) or uid
    return uid
