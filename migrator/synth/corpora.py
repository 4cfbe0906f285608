"""Whole corpora: the benchmark sizes, the store command's mixed corpus, and one with more
(SOP Class, Transfer Syntax) pairs than one association can carry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from migrator.synth.dataset import (
    DATE,
    TIME,
    derived_uid,
    make_dataset,
    set_instance_elements,
    write_dataset,
)
from migrator.synth.template import TemplateWriter


@dataclass(frozen=True)
class CorpusSize:
    """One benchmark corpus shape (BENCHMARKS.md)."""

    kind: str
    rows: int
    cols: int
    frames: int
    bits: int = 16


#: tiny ≈ 10 KB, small ≈ 0.5 MB, medium ≈ 5 MB, large ≈ 60 MB per file.
SIZES: dict[str, CorpusSize] = {
    "tiny": CorpusSize("SC", 64, 64, 1),
    "small": CorpusSize("CT", 512, 512, 1),
    "medium": CorpusSize("DX", 1600, 1600, 1),
    "large": CorpusSize("MF", 512, 512, 115),
}


def write_corpus(
    out_dir: str | Path,
    *,
    count: int,
    size: str = "tiny",
    rows: int | None = None,
    cols: int | None = None,
    frames: int | None = None,
    bits: int | None = None,
    kind: str | None = None,
    studies: int | None = None,
    series_per_study: int | None = None,
    seed: int = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    accessions: bool = False,
) -> list[Path]:
    """Write ``count`` files ``000000.dcm``… in study, then series, then instance order.

    ``accessions``: each study gets an Accession Number (``A`` and its seed and number;
    empty otherwise, as in every corpus written before it existed).

    ``size`` picks a preset from ``SIZES``; ``rows``/``cols``/``frames``/``bits``/``kind``
    override it. Files are spread evenly over ``studies`` (default one per 100 files) of
    ``series_per_study`` series (default 2), one patient per study. Returns the paths in order.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    if count < 0:
        raise ValueError("count must not be negative")
    preset = SIZES[size]
    n_studies = max(1, studies if studies is not None else math.ceil(count / 100))
    n_series = max(1, series_per_study if series_per_study is not None else 2)
    buckets = max(1, min(n_studies * n_series, count))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    ts = UID(transfer_syntax)
    # Uncompressed syntaxes take the template shortcut; compressed files are built one by one.
    fast = ts in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian)

    # Two corpora with the same seed but another shape must not share UIDs (a demo or a test
    # sending both would otherwise overwrite instances at the receiver).
    key = (seed, size, kind, rows, cols, frames, bits, str(ts))

    def build(i: int, study: int, series: int) -> Dataset:
        return make_dataset(
            kind or preset.kind,
            rows=rows or preset.rows,
            cols=cols or preset.cols,
            frames=frames or preset.frames,
            bits=bits or preset.bits,
            study_uid=derived_uid("corpus-study", *key, study),
            series_uid=derived_uid("corpus-series", *key, study, series),
            sop_uid=derived_uid("corpus-sop", *key, i),
            transfer_syntax=ts,
            seed=seed,
            patient_id=f"SYNTH{study + 1:04d}",
            instance_number=i + 1,
            series_number=series + 1,
            accession=f"A{seed % 10000:04d}{study + 1:06d}" if accessions else "",
        )

    paths: list[Path] = []
    current: tuple[int, Dataset, TemplateWriter] | None = None  # (bucket, template, writer)
    for i in range(count):
        bucket = i * buckets // count
        study, series = divmod(bucket, n_series)
        path = out / f"{i:06d}.dcm"
        if not fast or current is None or current[0] != bucket:
            ds = build(i, study, series)
            if fast:
                current = (bucket, ds, TemplateWriter(ds))
            paths.append(write_dataset(ds, path))
            continue
        _, ds, writer = current
        ds.SOPInstanceUID = derived_uid("corpus-sop", *key, i)
        set_instance_elements(ds, seed, i + 1, ts)
        paths.append(writer.write(ds, path))
    return paths


def write_mixed_corpus(out_dir: str | Path, *, seed: int = 0) -> list[Path]:
    """The store command's acceptance corpus: one file per case, distinct SOP Instance UIDs.

    CT, MR, RGB SC, a ~10 MB DX, a > 50 MiB multi-frame, implicit VR LE, explicit VR BE,
    two dataset-only files (implicit LE, explicit BE) and a JPEG 2000 Lossless file. All share
    patient ``SYNTHMIX`` and carry Study and Series UIDs (Orthanc answers 0xA700 without them).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = derived_uid("mixed-study", seed)
    cases: list[tuple[str, dict[str, object], bool]] = [
        ("ct.dcm", {"kind": "CT", "rows": 128, "cols": 128}, False),
        ("mr.dcm", {"kind": "MR", "rows": 128, "cols": 128}, False),
        ("sc_rgb.dcm", {"kind": "SC", "bits": 8, "samples": 3}, False),
        ("dx_10mb.dcm", {"kind": "DX", "rows": 2240, "cols": 2240}, False),
        ("multiframe_55mb.dcm", {"kind": "MF", "rows": 512, "cols": 512, "frames": 105}, False),
        ("ct_implicit.dcm", {"kind": "CT", "transfer_syntax": ImplicitVRLittleEndian}, False),
        ("mr_bigendian.dcm", {"kind": "MR", "transfer_syntax": ExplicitVRBigEndian}, False),
        ("nometa_implicit.dcm", {"kind": "CT", "transfer_syntax": ImplicitVRLittleEndian}, True),
        ("nometa_bigendian.dcm", {"kind": "MR", "transfer_syntax": ExplicitVRBigEndian}, True),
        ("mr_j2k.dcm", {"kind": "MR", "transfer_syntax": JPEG2000Lossless}, False),
    ]
    paths: list[Path] = []
    for number, (name, options, no_meta) in enumerate(cases, start=1):
        ds = make_dataset(
            seed=seed,
            patient_id="SYNTHMIX",
            study_uid=study,
            series_uid=derived_uid("mixed-series", seed, name),
            sop_uid=derived_uid("mixed-sop", seed, name),
            instance_number=number,
            series_number=number,
            **options,  # type: ignore[arg-type]
        )
        paths.append(write_dataset(ds, out / name, no_meta=no_meta))
    return paths


# Storage SOP classes that pynetdicom 3.0.4 lists but Orthanc 1.10.1 (DCMTK 3.6.7's list, with
# UnknownSopClassAccepted false) rejects with result 3: probed by proposing every class in
# pynetdicom's list. They are newer than DCMTK 3.6.7, so the corpus leaves them out.
_REJECTED_BY_ORTHANC_1_10: frozenset[str] = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.6.3",  # Photoacoustic Image
        "1.2.840.10008.5.1.4.1.1.9.1.4",  # General 32-bit ECG Waveform
        "1.2.840.10008.5.1.4.1.1.9.100.1",  # Waveform Presentation State
        "1.2.840.10008.5.1.4.1.1.9.100.2",  # Waveform Acquisition Presentation State
        "1.2.840.10008.5.1.4.1.1.11.12",  # Variable Modality LUT Softcopy Presentation State
        "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation
        "1.2.840.10008.5.1.4.1.1.66.8",  # Height Map Segmentation
        "1.2.840.10008.5.1.4.1.1.77.1.8",  # Confocal Microscopy Image
        "1.2.840.10008.5.1.4.1.1.77.1.9",  # Confocal Microscopy Tiled Pyramidal Image
        "1.2.840.10008.5.1.4.1.1.88.77",  # Waveform Annotation SR
        "1.2.840.10008.5.1.4.1.1.481.23",  # Enhanced RT Image
        "1.2.840.10008.5.1.4.1.1.481.24",  # Enhanced Continuous RT Image
        "1.2.840.10008.5.1.4.1.1.481.25",  # RT Patient Position Acquisition Instruction
    }
)


def many_contexts_sop_classes() -> list[str]:
    """Storage SOP Class UIDs usable with Orthanc 1.10.1, in pynetdicom's (stable) order."""
    from pynetdicom.sop_class import _STORAGE_CLASSES

    return [str(uid) for uid in _STORAGE_CLASSES.values() if uid not in _REJECTED_BY_ORTHANC_1_10]


# Two uncompressed syntaxes per class: every SCP accepts them, so a rejected context is never
# the reason a file fails.
_MANY_CONTEXTS_SYNTAXES: Sequence[str] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def write_many_contexts_corpus(
    out_dir: str | Path, pairs: int = 140, *, seed: int = 0
) -> list[Path]:
    """Files covering ``pairs`` distinct (SOP Class, Transfer Syntax) pairs, > 128 by default.

    A single association carries at most 128 presentation contexts (PS3.8 §9.3.2.2: odd IDs
    1–255), so a sender must split this corpus. Datasets carry no pixel data: Orthanc does not
    check IOD modules, only that Study and Series UIDs are present.
    """
    classes = many_contexts_sop_classes()
    available = len(classes) * len(_MANY_CONTEXTS_SYNTAXES)
    if not 0 < pairs <= available:
        raise ValueError(f"pairs must be in 1..{available}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = derived_uid("contexts-study", seed)
    paths: list[Path] = []
    for i in range(pairs):
        sop_class = classes[i // len(_MANY_CONTEXTS_SYNTAXES)]
        ts = _MANY_CONTEXTS_SYNTAXES[i % len(_MANY_CONTEXTS_SYNTAXES)]
        sop_uid = derived_uid("contexts-sop", seed, i)
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = DATE
        ds.StudyTime = TIME
        ds.AccessionNumber = ""
        ds.Modality = "OT"
        ds.ReferringPhysicianName = ""
        ds.PatientName = "SYNTH^PATIENT"
        ds.PatientID = "SYNTHCTX"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = derived_uid("contexts-series", seed, sop_class)
        ds.StudyID = "1"
        ds.SeriesNumber = i // len(_MANY_CONTEXTS_SYNTAXES) + 1
        ds.InstanceNumber = i % len(_MANY_CONTEXTS_SYNTAXES) + 1
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = UID(ts)
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        paths.append(write_dataset(ds, out / f"{i:04d}.dcm"))
    return paths
