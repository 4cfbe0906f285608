"""The slow path of header inspection: pydicom reads what the header scan leaves to it.

Deflated datasets, headers longer than the scan reads, and datasets not encoded as their
File Meta says are read by pydicom (``stop_before_pixels``). pydicom is imported only when a
file needs it: the CLI's start-up does not pay for it.
"""

from __future__ import annotations

from migrator.dicomfile.header import DicomHeader, NotDicomError, build_header


def inspect_with_pydicom(src: object, size: int, name: str = "") -> DicomHeader:
    """Slow path: deflated datasets, very long headers, odd encodings."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(
            src,  # type: ignore[arg-type]
            stop_before_pixels=True,
            specific_tags=[0x00080016, 0x00080018, 0x0020000D, 0x0020000E],
        )
    except InvalidDicomError as exc:
        raise NotDicomError(f"not a DICOM file: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds on damaged files
        raise NotDicomError(f"unreadable DICOM header: {type(exc).__name__}: {exc}") from exc
    meta = ds.file_meta
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if not ts:
        raise NotDicomError("no Transfer Syntax UID and the encoding cannot be recognised")
    try:
        # Values are decoded on access: a damaged one raises here, not in dcmread.
        values = {
            "sop_class_uid": ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", ""),
            "sop_instance_uid": ds.get("SOPInstanceUID", "")
            or meta.get("MediaStorageSOPInstanceUID", ""),
            "study_uid": ds.get("StudyInstanceUID", ""),
            "series_uid": ds.get("SeriesInstanceUID", ""),
            "accession": ds.get("AccessionNumber", ""),
            "modality": ds.get("Modality", ""),
            "study_date": ds.get("StudyDate", ""),
            "patient_id": ds.get("PatientID", ""),
        }
        found = {k: str(v) for k, v in values.items() if v}
        offset = _meta_end(src) if meta else 0
    except Exception as exc:  # as above
        raise NotDicomError(f"unreadable DICOM header: {type(exc).__name__}: {exc}") from exc
    return build_header(
        found.get("sop_class_uid", ""),
        found.get("sop_instance_uid", ""),
        ts,
        found,
        offset,
        size,
        bool(meta),
    )


def _meta_end(src: object) -> int:
    import pydicom.filereader as fr

    if isinstance(src, str):
        with open(src, "rb") as f:
            fr.read_preamble(f, False)
            fr._read_file_meta_info(f)
            return f.tell()
    import io

    assert isinstance(src, io.BytesIO)
    src.seek(0)
    fr.read_preamble(src, False)
    fr._read_file_meta_info(src)
    return src.tell()
