"""Fast writing of the many instances of one series, byte-identical to ``write_dataset``.

Used by ``write_corpus`` for uncompressed syntaxes (see :class:`TemplateWriter`).
"""

from __future__ import annotations

import copy
import struct
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset as _pydicom_write_dataset
from pydicom.uid import UID

from migrator.synth.dataset import INSTANCE_TAGS


def _encode(ds: Dataset, implicit_vr: bool, little_endian: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit_vr, little_endian
    _pydicom_write_dataset(fp, ds)
    return bytes(fp.getvalue())


class TemplateWriter:
    """Writes the instances of one series from pre-encoded bytes of its shared elements.

    pydicom spends ~1.5 ms per file encoding ~45 elements and validating the File Meta; here
    only the elements in ``INSTANCE_TAGS`` and the SOP Instance UID are encoded per file. The
    output is byte-identical to ``write_dataset`` (tests/test_synth.py checks it). Only for
    uncompressed, non-deflated syntaxes, where elements encode independently in tag order.
    """

    def __init__(self, template: Dataset) -> None:
        ts = UID(template.file_meta.TransferSyntaxUID)
        self._implicit, self._little = ts.is_implicit_VR, ts.is_little_endian
        meta = copy.deepcopy(template.file_meta)
        validate_file_meta(meta, enforce_standard=True)  # adds what dcmwrite would add
        if "FileMetaInformationGroupLength" in meta:
            del meta.FileMetaInformationGroupLength  # recomputed per file
        self._meta_runs = self._split(meta, frozenset({0x00020003}), False, True)
        self._body_runs = self._split(
            template, INSTANCE_TAGS | {0x00080018}, self._implicit, self._little
        )

    @staticmethod
    def _split(
        ds: Dataset, varying: frozenset[int], implicit_vr: bool, little_endian: bool
    ) -> list[bytes | int]:
        """Encoded runs of constant elements, with the tag of each varying element between."""
        runs: list[bytes | int] = []
        static = Dataset()
        for elem in ds:  # iterates in ascending tag order, the order they are written in
            if elem.tag in varying:
                if len(static):
                    runs.append(_encode(static, implicit_vr, little_endian))
                    static = Dataset()
                runs.append(int(elem.tag))
            else:
                static.add(elem)
        if len(static):
            runs.append(_encode(static, implicit_vr, little_endian))
        return runs

    @staticmethod
    def _join(runs: list[bytes | int], ds: Dataset, implicit_vr: bool, little: bool) -> bytes:
        parts: list[bytes] = []
        for run in runs:
            if isinstance(run, bytes):
                parts.append(run)
            else:
                one = Dataset()
                one.add(ds[run])
                parts.append(_encode(one, implicit_vr, little))
        return b"".join(parts)

    def write(self, ds: Dataset, path: Path) -> Path:
        """Write ``ds``, which must equal the template outside ``INSTANCE_TAGS`` and the UIDs."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
        rest = self._join(self._meta_runs, meta, False, True)
        # (0002,0000) UL: byte count of the rest of the File Meta group (PS3.10 §7.1).
        group_length = b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(rest))
        body = self._join(self._body_runs, ds, self._implicit, self._little)
        with open(path, "wb") as fh:
            fh.write(b"\0" * 128 + b"DICM" + group_length + rest)
            fh.write(body)
        return path
