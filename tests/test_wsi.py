"""Issue 14's acceptance, part two: a whole-slide image and one association per batch.

The Orthanc C-STORE test guide's fifth case: a VL Whole Slide Microscopy Image (tiled,
multi-frame, JPEG baseline, over 200 MB) goes through ``migrator store`` and ``migrator run``
into Orthanc, which must hold it whole, while the memory of every sending process stays far
below the file's size. Then: one association carries a whole batch, counted at the receiver.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from migrator import synth
from tests.behaviourhelpers import Problems, check_senders, send
from tests.enginehelpers import processes_with_env
from tests.peers.marker_scp import marker_scp
from tests.peers.orthanc import OrthancPeer
from tests.storehelpers import sop_uid

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
WSI_MIN_BYTES = 200 * 10**6
#: Peak RSS any one sending process may reach: far below the file (~211 MB).
RSS_LIMIT_KB = 150 * 1024
TILES_ACROSS = 64


# -- the slide ------------------------------------------------------------------------------


@dataclass
class Slide:
    path: Path
    sop_instance_uid: str
    frames: int
    size: int
    first_frame: bytes
    last_frame: bytes


def _source_frame() -> tuple[bytes, Dataset]:
    """One JPEG baseline (SOF0) 320×240 YBR_FULL_422 frame from pydicom's test data."""
    path = get_testdata_file("examples_ybr_color.dcm", download=False)
    assert path is not None, "pydicom test file examples_ybr_color.dcm is not available"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEG_BASELINE
    frame = next(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    assert frame[:2] == b"\xff\xd8" and frame[-2:] == b"\xff\xd9"
    return frame, ds


def _tile(frame: bytes, number: int) -> bytes:
    """``frame`` with a 64 KB COM segment after SOI+APP0 that names the tile: still a valid
    JPEG (decoders skip comments), ~72 KB, as large as a 512×512 tile at high quality, and
    each tile differs from the others. Even length: no pad byte needed in its item."""
    assert frame[2:4] == b"\xff\xe0"  # APP0 (JFIF) comes first; the comment goes after it
    app0_end = 4 + int.from_bytes(frame[4:6], "big")
    length = 65532 - (len(frame) % 2)  # segment length field includes its own 2 bytes
    text = f"pacs-migrator test tile {number:06d}; ".encode()
    payload = (text * (length // len(text) + 1))[: length - 2]
    tile = frame[:app0_end] + b"\xff\xfe" + length.to_bytes(2, "big") + payload + frame[app0_end:]
    assert len(tile) % 2 == 0
    return tile


def _item(tag_elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, tag_elem, len(value)) + value


def write_wsi(path: Path, min_bytes: int = WSI_MIN_BYTES) -> Slide:
    """Stream-write a tiled-full VL WSI, JPEG baseline, one fragment per frame, with a Basic
    Offset Table; only one tile is in memory at a time."""
    frame, src = _source_frame()
    tile_bytes = len(_tile(frame, 0)) + 8
    frames = math.ceil(min_bytes / tile_bytes / TILES_ACROSS) * TILES_ACROSS
    tiles_down = frames // TILES_ACROSS
    uid = synth.derived_uid("behaviour-wsi", frames)

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.SOPClassUID = WSI_SOP_CLASS
    ds.SOPInstanceUID = uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDateTime = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "SM"
    ds.Manufacturer = "pacs-migrator tests"
    ds.ReferringPhysicianName = ""
    ds.PatientName = "SLIDE^WHOLE"
    ds.PatientID = "BEHAVIOUR-WSI"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = synth.derived_uid("behaviour-wsi-study")
    ds.SeriesInstanceUID = synth.derived_uid("behaviour-wsi-series")
    ds.FrameOfReferenceUID = synth.derived_uid("behaviour-wsi-for")
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ContainerIdentifier = "SLIDE-1"
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixColumns = int(src.Columns) * TILES_ACROSS
    ds.TotalPixelMatrixRows = int(src.Rows) * tiles_down
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    ds.ImagedVolumeWidth = ds.TotalPixelMatrixColumns * 0.00025
    ds.ImagedVolumeHeight = ds.TotalPixelMatrixRows * 0.00025
    ds.ImagedVolumeDepth = 0.001
    ds.VolumetricProperties = "VOLUME"
    ds.BurnedInAnnotation = "NO"
    ds.SpecimenLabelInImage = "NO"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = src.PhotometricInterpretation  # YBR_FULL_422
    ds.PlanarConfiguration = 0
    ds.Rows = src.Rows
    ds.Columns = src.Columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = frames
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(WSI_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = UID(uid)
    meta.TransferSyntaxUID = UID(JPEG_BASELINE)
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)  # everything but Pixel Data

    offsets = [i * tile_bytes for i in range(frames)]
    with open(path, "ab") as f:
        # (7FE0,0010) OB, undefined length; Basic Offset Table; one item per frame; end.
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
        f.write(_item(0xE000, struct.pack(f"<{frames}I", *offsets)))
        for i in range(frames):
            f.write(_item(0xE000, _tile(frame, i)))
        f.write(_item(0xE0DD, b""))
    size = path.stat().st_size
    assert size >= min_bytes, size
    return Slide(path, uid, frames, size, _tile(frame, 0), _tile(frame, frames - 1))


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slide]:
    folder = tmp_path_factory.mktemp("wsi")
    made = write_wsi(folder / "slide.dcm")
    header = pydicom.dcmread(made.path, stop_before_pixels=True)
    assert header.SOPClassUID == WSI_SOP_CLASS and int(header.NumberOfFrames) == made.frames
    yield made
    made.path.unlink(missing_ok=True)  # 200 MB: do not leave it to pytest's tmp retention


# -- memory of the sending processes ----------------------------------------------------------

#: Runs the command given after it as a child, then prints that child's peak RSS (kB).
#: The wrapper is a small Python: the peak Linux carries from it into the exec'd child is
#: its own ~10 MB, not the pytest process's (TESTING.md; tests/test_store.py 1 GB test).
_MAXRSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:])\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print(f'MAXRSS_KB {peak}', flush=True)\n"
    "sys.exit(code)\n"
)


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class RssSampler:
    """Every process of a command (found by its marker), sampled every ~0.1 s: the highest
    VmRSS seen and the highest VmHWM (the kernel's own peak, which no sample can miss)."""

    rss_kb: dict[int, int] = field(default_factory=dict)
    hwm_kb: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)

    def __call__(self, marker: str) -> None:
        for pid in processes_with_env(marker):
            rss, hwm = _status_kb(pid, "VmRSS"), _status_kb(pid, "VmHWM")
            self.rss_kb[pid] = max(self.rss_kb.get(pid, 0), rss)
            self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), hwm)
            if pid not in self.names:
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    self.names[pid] = cmd.decode(errors="replace")[:80]
                except OSError:
                    self.names[pid] = "?"

    def peak_kb(self) -> int:
        return max([*self.rss_kb.values(), *self.hwm_kb.values(), 0])

    def describe(self) -> str:
        rows = sorted(self.hwm_kb, key=lambda p: -max(self.hwm_kb[p], self.rss_kb[p]))
        return "; ".join(
            f"{pid} {self.names.get(pid, '?')!r}: HWM {self.hwm_kb[pid] // 1024} MB, "
            f"RSS {self.rss_kb[pid] // 1024} MB"
            for pid in rows
        )


# -- the WSI through both front ends ----------------------------------------------------------


WSI_VARIANTS = {
    "store": ("store", []),
    # one batch: the run process sends it itself while its worker boots (transfer/inline.py)
    "run": ("run", []),
    # a throttle delay keeps the run process from sending: the worker process sends it
    "run-worker": ("run", ["--throttle-delay", "1"]),
}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", list(WSI_VARIANTS))
def test_whole_slide_image_is_stored_whole_with_flat_memory(
    variant: str,
    slide: Slide,
    orthanc_factory: Callable[..., OrthancPeer],
    tmp_path: Path,
) -> None:
    front_end, run_extra = WSI_VARIANTS[variant]
    orthanc = orthanc_factory(verbose=False)
    sampler = RssSampler()
    if front_end == "store":
        result = send(
            "store",
            slide.path.parent,
            orthanc.dicom_port,
            "ORTHANC",
            tmp_path,
            prefix=[sys.executable, "-c", _MAXRSS_WRAPPER],
            timeout=240,
        )
        lines = [ln for ln in result.output.splitlines() if ln.startswith("MAXRSS_KB ")]
        peak_kb = int(lines[-1].split()[1]) if lines else 0
        where = "the store process"
    else:
        result = send(
            "run",
            slide.path.parent,
            orthanc.dicom_port,
            "ORTHANC",
            tmp_path,
            run_extra=run_extra,
            workers=1,
            sample=sampler,
            timeout=240,
        )
        peak_kb = sampler.peak_kb()
        where = sampler.describe()
    p = Problems()
    p.check(result.rc == 0, f"exit code {result.rc}, expected 0")
    check_senders(p, variant, result)
    if result.report is not None:
        entry = result.files().get(slide.path.name)
        p.check(
            entry is not None and entry["state"] == "stored",
            f"report: {entry and entry['state']}: {entry and entry['reason']!r}",
        )
        p.check(entry is None or not entry["transcoded"], "report: the slide was re-encoded")
    else:
        p.append("no report written")
    p.check(peak_kb > 0, f"no memory measured ({where})")
    p.check(
        peak_kb < RSS_LIMIT_KB,
        f"peak RSS {peak_kb / 1024:.0f} MB ≥ {RSS_LIMIT_KB // 1024} MB for a "
        f"{slide.size / 1e6:.0f} MB file ({where})",
    )
    oid = orthanc.find_instance(slide.sop_instance_uid)
    if p.check(oid is not None, "Orthanc does not hold the slide"):
        assert oid is not None
        info = orthanc.get(f"/instances/{oid}")
        tags = orthanc.simplified_tags(oid)
        p.check(
            int(tags.get("NumberOfFrames", 0)) == slide.frames,
            f"Orthanc: NumberOfFrames {tags.get('NumberOfFrames')}, expected {slide.frames}",
        )
        # Orthanc writes its own File Meta: allow a few hundred bytes either way.
        p.check(
            abs(int(info["FileSize"]) - slide.size) < 1024,
            f"Orthanc: file of {info['FileSize']} bytes, sent {slide.size}",
        )
        meta = orthanc.metadata(oid)
        p.check(
            meta.get("TransferSyntax") == JPEG_BASELINE,
            f"Orthanc: transfer syntax {meta.get('TransferSyntax')}",
        )
        for index, expected in ((0, slide.first_frame), (slide.frames - 1, slide.last_frame)):
            r = requests.get(f"{orthanc.url}/instances/{oid}/frames/{index}/raw", timeout=60)
            p.check(
                r.status_code == 200 and r.content == expected,
                f"Orthanc: frame {index} differs ({r.status_code}, {len(r.content)} bytes)",
            )
    p.done(result)


# -- one association per batch --------------------------------------------------------------

BATCH = 50

# One association per sending process (-j 1): the batch goes on it, not one per file. With
# -j N a process spreads its batch over N associations.
ONE_ASSOCIATION_VARIANTS = {
    "store": ("store", ["-j", "1"], []),
    # the run process sends the batch itself (a small job, sent while the worker boots)
    # (--no-preflight: its C-ECHO would be one more association at the receiver)
    "run": ("run", ["-j", "1"], ["--batch-files", str(BATCH), "--no-preflight"]),
    # a throttle delay keeps the run process from sending: the worker process sends it
    "run-worker": (
        "run",
        ["-j", "1"],
        ["--batch-files", str(BATCH), "--throttle-delay", "1", "--no-preflight"],
    ),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("variant", list(ONE_ASSOCIATION_VARIANTS))
def test_one_association_carries_a_whole_batch(variant: str, tmp_path: Path) -> None:
    front, extra, run_extra = ONE_ASSOCIATION_VARIANTS[variant]
    files = synth.write_corpus(tmp_path / "in", count=BATCH, size="tiny", seed=1420)
    with marker_scp() as scp:
        result = send(
            front,
            files[0].parent,
            scp.port,
            "MARKER",
            tmp_path,
            *extra,
            run_extra=run_extra,
            workers=1,
        )
    p = Problems()
    p.check(result.rc == 0, f"exit code {result.rc}, expected 0")
    check_senders(p, variant, result)
    p.check(set(scp.stored) == {sop_uid(f) for f in files}, f"{scp.distinct}/{BATCH} stored")
    p.check(scp.total == BATCH, f"{scp.total} C-STOREs stored for {BATCH} files")
    p.check(scp.associations == 1, f"{scp.associations} associations, expected 1")
    per = scp.stores_per_association()
    p.check(list(per.values()) == [BATCH], f"files per association: {sorted(per.values())}")
    p.done(result)
