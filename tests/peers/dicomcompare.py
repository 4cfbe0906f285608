"""Compare what was sent with what a peer stored.

Peers rewrite the File Meta (Orthanc puts in its own implementation UID and group length), so
files are never byte-identical: compare the datasets outside group 0002, and the pixel bytes.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

Source = str | Path | bytes | Dataset


def _load(src: Source) -> Dataset:
    if isinstance(src, Dataset):
        return src
    if isinstance(src, bytes):
        return pydicom.dcmread(BytesIO(src), force=True)
    # force=True: dataset-only files (no preamble, no File Meta) are valid inputs too
    return pydicom.dcmread(src, force=True)


def dataset_differences(a: Source, b: Source, *, pixels: str = "bytes") -> list[str]:
    """Human-readable differences between two datasets, ignoring group 0002.

    Values are compared, not VRs: a file received in another transfer syntax may read PixelData
    as OB on one side and OW on the other. ``pixels="bytes"`` compares PixelData byte for byte
    (same transfer syntax on both sides); ``pixels="values"`` compares decoded arrays (for a
    peer that stored the object in another syntax, e.g. big endian received as little endian).
    """
    da, db = _load(a), _load(b)
    tags_a = {e.tag for e in da if e.tag.group != 0x0002}
    tags_b = {e.tag for e in db if e.tag.group != 0x0002}
    diffs = [f"{t} only in first" for t in sorted(tags_a - tags_b)]
    diffs += [f"{t} only in second" for t in sorted(tags_b - tags_a)]
    for tag in sorted(tags_a & tags_b):
        ea, eb = da[tag], db[tag]
        if tag == 0x7FE00010:
            if pixels == "values":
                if not np.array_equal(da.pixel_array, db.pixel_array):
                    diffs.append("PixelData: decoded values differ")
            elif ea.value != eb.value:
                diffs.append(f"PixelData: {len(ea.value)} vs {len(eb.value)} bytes, not equal")
        elif ea.value != eb.value:
            diffs.append(f"{tag} {ea.keyword}: {ea.value!r:.80} != {eb.value!r:.80}")
    return diffs


def compare_datasets(a: Source, b: Source, *, pixels: str = "bytes") -> None:
    """Assert that two DICOM objects hold the same dataset (group 0002 aside) and pixels."""
    diffs = dataset_differences(a, b, pixels=pixels)
    assert not diffs, "datasets differ:\n  " + "\n  ".join(diffs)
