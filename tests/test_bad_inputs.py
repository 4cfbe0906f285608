"""The bad-input corpus of issue 7: every kind of input a real archive holds that is not a
clean DICOM file, through `migrator store` and `migrator run` (real Celery workers, real
redis-server) into Orthanc.

Each input ends with one specific, human-readable reason in the report; none stops the
job; `planned = stored + failed + skipped`; exactly the good instances arrive. The receiver
is an Orthanc that refuses JPEG 2000 (so a J2K file must be decoded first) and unknown SOP
classes (UnknownSopClassAccepted false, its default).

The corpus (one folder, walked recursively) and what each entry must become:

=============================  =======  ===============================================
entry                          state    why
=============================  =======  ===============================================
CT plain 001.dcm               stored   a name with spaces
Müller Ærø 王.dcm              stored   a non-ASCII name
ünïcødé folder/ct 2.dcm        stored   in a non-ASCII folder
café-latin1.dcm (bytes name)   stored   a name that is not valid UTF-8 (Latin-1 bytes)
no_meta.dcm                    stored   a bare dataset; the report says it had no File Meta
mr_j2k.dcm                     stored   J2K decoded losslessly, sent as Explicit VR LE
notes.txt                      skipped  not DICOM
empty.dcm                      skipped  0 bytes
pipe.dcm (a FIFO)              skipped  not a regular file (never opened: it would block)
loop -> .                      skipped  a link to a folder, not followed (no recursion)
truncated_cut.dcm              failed   cut inside Pixel Data (pydicom reads it silently)
truncated_short_pixels.dcm     failed   complete file, Pixel Data shorter than the image
truncated_header.dcm           failed   cut inside the dataset header
rtplan_truncated.dcm           failed   pydicom's: a sequence running past the end
no_sop_class.dcm               failed   no SOP Class UID (dataset nor File Meta)
no_sop_instance.dcm            failed   no SOP Instance UID
no_study.dcm / no_series.dcm   failed   no Study / Series Instance UID
private_sop_class.dcm          failed   the PACS rejects the presentation context
mr_j2k_corrupt.dcm             failed   J2K main header damaged: decoding fails
broken link.dcm                failed   a symbolic link to nothing
unreadable.dcm                 failed   permission denied (see ``_unreadable``)
.hidden.dcm                    —        hidden files are not listed (documented)
=============================  =======  ===============================================
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filereader import data_element_generator
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

from migrator import synth
from migrator.dicomfile import (
    InvalidInstanceError,
    NotDicomError,
    TruncatedError,
    inspect_bytes,
    inspect_file,
)
from migrator.errors import SourceError
from migrator.outcomes import State
from migrator.sources.filesystem import FileSource
from migrator.sources.inspect import inspect_item, refusal
from tests.enginehelpers import assert_invariant, children, common_args, finish, only_job
from tests.enginehelpers import start_run as start_migrator_run
from tests.peers.dcmtk import StoreScpPeer
from tests.peers.orthanc import OrthancPeer
from tests.peers.redis import RedisPeer
from tests.storehelpers import load_report, run_migrator
from workers.local import LocalWorkers

pytestmark = pytest.mark.timeout(300)

PRIVATE_SOP_CLASS = UID("1.2.826.0.1.3680043.9999.77.1")
LATIN1_NAME = os.fsdecode(b"caf\xe9-latin1.dcm")  # as os.scandir gives it: surrogate escape


@dataclass(frozen=True)
class Expect:
    state: str
    #: Every one of these must be in the reason (case-sensitive)
    reason: tuple[str, ...] = ()
    #: For stored files: the SOP Instance UID that must arrive
    sop_uid: str = ""


@dataclass(frozen=True)
class Corpus:
    root: Path
    expect: dict[str, Expect]

    @property
    def stored_uids(self) -> set[str]:
        return {e.sop_uid for e in self.expect.values() if e.state == "stored"}


def _dataset(name: str, **options: Any) -> pydicom.Dataset:
    return synth.make_dataset(
        "CT",
        sop_uid=synth.derived_uid("bad-inputs-sop", name),
        study_uid=synth.derived_uid("bad-inputs-study"),
        series_uid=synth.derived_uid("bad-inputs-series", name),
        patient_id="BADINPUT",
        **options,
    )


def _save(ds: pydicom.Dataset, path: Path | bytes) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return buf.getvalue()


def _save_unchecked(ds: pydicom.Dataset, path: Path) -> None:
    """Written as it is: pydicom's File Meta checks would refuse what is missing on purpose."""
    pydicom.dcmwrite(path, ds, enforce_file_format=False)


def _write_only_for_root() -> Path | None:
    """A file root cannot read: a write-only sysfs attribute (kernfs answers EACCES to an
    O_RDONLY open when the attribute has no show method, whoever asks)."""
    for candidate in sorted(Path("/sys/bus").glob("*/uevent")):
        try:
            candidate.open("rb").close()
        except PermissionError:
            return candidate
        except OSError:
            continue
    return None


def _unreadable(path: Path, good: pydicom.Dataset) -> bool:
    """A file whose open() fails with EACCES. These tests run as root, who reads a chmod 000
    file without a second thought, so then it is a symbolic link to a write-only sysfs
    attribute: to the walker a regular file in the corpus like any other. False when this
    machine has neither (``test_unreadable_input_can_be_made_here`` then says so)."""
    if os.geteuid() != 0:
        _save(good, path)
        path.chmod(0)
        return True
    target = _write_only_for_root()
    if target is not None:
        path.symlink_to(target)
    return target is not None


def build_corpus(root: Path) -> Corpus:
    root.mkdir(parents=True)
    expect: dict[str, Expect] = {}

    def stored(name: str, ds: pydicom.Dataset, *reason: str) -> None:
        expect[name] = Expect("stored", reason, str(ds.SOPInstanceUID))

    for name in ("CT plain 001.dcm", "Müller Ærø 王.dcm", "ünïcødé folder/ct 2.dcm"):
        (root / name).parent.mkdir(exist_ok=True)
        ds = _dataset(name)
        _save(ds, root / name)
        stored(name, ds)
    ds = _dataset("latin1")
    _save(ds, os.fsencode(root) + b"/caf\xe9-latin1.dcm")
    stored(LATIN1_NAME, ds)

    bare = _dataset("nometa", transfer_syntax=ImplicitVRLittleEndian)
    synth.write_dataset(bare, root / "no_meta.dcm", no_meta=True)
    stored("no_meta.dcm", bare, "no File Meta", "Implicit VR Little Endian")

    j2k = _dataset("j2k", transfer_syntax=JPEG2000Lossless)
    _save(j2k, root / "mr_j2k.dcm")
    stored("mr_j2k.dcm", j2k)

    (root / "notes.txt").write_text("scanner notes, not DICOM\n")
    expect["notes.txt"] = Expect("skipped", ("not a DICOM file",))
    (root / "empty.dcm").write_bytes(b"")
    expect["empty.dcm"] = Expect("skipped", ("empty file (0 bytes)",))
    os.mkfifo(root / "pipe.dcm")
    expect["pipe.dcm"] = Expect("skipped", ("not a regular file", "named pipe"))
    (root / "loop").symlink_to(".")
    expect["loop"] = Expect("skipped", ("symbolic link to a folder", "not followed"))
    _save(_dataset("hidden"), root / ".hidden.dcm")  # not listed at all

    whole = _save(_dataset("cut"), root / "truncated_cut.dcm")
    (root / "truncated_cut.dcm").write_bytes(whole[: len(whole) - 3000])
    expect["truncated_cut.dcm"] = Expect(
        "failed", ("truncated: Pixel Data declares 8192 bytes", "holds only 5192")
    )
    short = _dataset("short")
    short.PixelData = short.PixelData[:4096]
    _save(short, root / "truncated_short_pixels.dcm")
    expect["truncated_short_pixels.dcm"] = Expect(
        "failed",
        ("truncated: Pixel Data holds 4096 bytes", "64 rows x 64 columns", "need 8192"),
    )
    head = _save(_dataset("headcut"), root / "truncated_header.dcm")
    (root / "truncated_header.dcm").write_bytes(head[:700])
    expect["truncated_header.dcm"] = Expect("failed", ("truncated: the file ends inside",))
    from pydicom.data import get_testdata_file

    rtplan = Path(str(get_testdata_file("rtplan_truncated.dcm")))
    (root / "rtplan_truncated.dcm").write_bytes(rtplan.read_bytes())
    expect["rtplan_truncated.dcm"] = Expect(
        "failed", ("truncated: element (300A,00B0) declares 976 bytes",)
    )

    no_class = _dataset("noclass")
    del no_class.SOPClassUID, no_class.file_meta.MediaStorageSOPClassUID
    _save_unchecked(no_class, root / "no_sop_class.dcm")
    expect["no_sop_class.dcm"] = Expect("failed", ("invalid instance: no SOP Class UID",))
    no_inst = _dataset("noinstance")
    del no_inst.SOPInstanceUID, no_inst.file_meta.MediaStorageSOPInstanceUID
    _save_unchecked(no_inst, root / "no_sop_instance.dcm")
    expect["no_sop_instance.dcm"] = Expect("failed", ("invalid instance: no SOP Instance UID",))
    for name, keyword, label in (
        ("no_study.dcm", "StudyInstanceUID", "Study"),
        ("no_series.dcm", "SeriesInstanceUID", "Series"),
    ):
        ds = _dataset(name)
        delattr(ds, keyword)
        _save(ds, root / name)
        expect[name] = Expect("failed", (f"invalid instance: no {label} Instance UID",))

    private = _dataset("private")
    private.SOPClassUID = private.file_meta.MediaStorageSOPClassUID = PRIVATE_SOP_CLASS
    _save(private, root / "private_sop_class.dcm")
    expect["private_sop_class.dcm"] = Expect(
        "failed",
        (f"the PACS does not accept SOP class {PRIVATE_SOP_CLASS} (private", "rejected"),
    )

    corrupt = _dataset("j2kcorrupt", transfer_syntax=JPEG2000Lossless)
    frame = bytearray(next(generate_frames(corrupt.PixelData, number_of_frames=1)))
    frame[6:20] = b"\xff" * 14  # inside the SIZ marker segment: image size, components
    corrupt.PixelData = encapsulate([bytes(frame)])
    _save(corrupt, root / "mr_j2k_corrupt.dcm")
    expect["mr_j2k_corrupt.dcm"] = Expect(
        "failed",
        (
            "the PACS does not accept JPEG 2000 Image Compression (Lossless Only)",
            "converting it to Explicit VR Little Endian failed",
            "cannot decode pixel data",
            "failed to read the header",
        ),
    )

    (root / "broken link.dcm").symlink_to(root / "gone.dcm")
    expect["broken link.dcm"] = Expect("failed", ("broken symbolic link", "does not exist"))
    if _unreadable(root / "unreadable.dcm", _dataset("unreadable")):
        expect["unreadable.dcm"] = Expect("failed", ("permission denied",))
    return Corpus(root, expect)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("bad") / "archive")


@pytest.fixture
def orthanc_no_j2k(orthanc_factory: Callable[..., OrthancPeer]) -> OrthancPeer:
    return orthanc_factory(compression="no-j2k")


def _check_report(corpus: Corpus, report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every entry once, under its own name, in the state and with the reason expected."""
    files = {os.path.relpath(f["uri"], corpus.root): f for f in report["files"]}
    assert len(files) == len(report["files"]), "a file reported twice"
    assert set(files) == set(corpus.expect), (
        f"missing: {sorted(set(corpus.expect) - set(files))}, "
        f"unexpected: {sorted(set(files) - set(corpus.expect))}"
    )
    for name, want in corpus.expect.items():
        got = files[name]
        assert got["state"] == want.state, (name, got)
        for part in want.reason:
            assert part in got["reason"], (name, part, got["reason"])
        if want.state != "stored":
            assert got["reason"], (name, "no reason given")
    for state in ("stored", "failed", "skipped"):
        expected = sum(1 for e in corpus.expect.values() if e.state == state)
        assert report["totals"][state] == expected, (state, report["totals"])
    j2k = files["mr_j2k.dcm"]
    assert j2k["transcoded"] and j2k["ts_sent"] == ExplicitVRLittleEndian
    assert j2k["ts_original"] == JPEG2000Lossless
    assert files["no_meta.dcm"]["ts_sent"] == ImplicitVRLittleEndian
    return files


def _check_arrived(corpus: Corpus, orthanc: OrthancPeer) -> None:
    assert orthanc.all_sop_instance_uids() == corpus.stored_uids
    # The decoded J2K arrived uncompressed, with its SOP Instance UID kept.
    oid = orthanc.find_instance(corpus.expect["mr_j2k.dcm"].sop_uid)
    assert oid and orthanc.metadata(oid)["TransferSyntax"] == ExplicitVRLittleEndian


def test_unreadable_input_can_be_made_here() -> None:
    """The permission case needs a file this user cannot open; say so if there is none."""
    if os.geteuid() == 0 and _write_only_for_root() is None:
        pytest.skip(
            "running as root without a write-only sysfs attribute: cannot make a file "
            "unreadable, so the corpus has no permission case"
        )


def test_store_reports_every_bad_input_and_sends_only_the_good(
    corpus: Corpus, orthanc_no_j2k: OrthancPeer, tmp_path: Path
) -> None:
    report = tmp_path / "store.json"
    t0 = time.monotonic()
    proc = run_migrator(
        "store",
        *common_args(("127.0.0.1", orthanc_no_j2k.dicom_port), "ORTHANC"),
        "--dir",
        corpus.root,
        "-R",
        "--concurrency",
        "2",
        "--report",
        report,
        timeout=120,
    )
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # some files failed: exit 1, nothing fatal
    # Nothing was sent that makes the PACS wait for bytes that never come (a truncated file
    # used to: ~2 minutes of aborts and retries).
    assert elapsed < 30, (elapsed, out)
    assert "Traceback" not in out, out
    _check_report(corpus, load_report(report))
    _check_arrived(corpus, orthanc_no_j2k)
    # The console names the files that did not make it, with their reasons.
    for name, want in corpus.expect.items():
        if want.state != "stored":
            assert f"{corpus.root / name}: {want.state}: " in proc.stdout, name


def test_run_reports_every_bad_input_and_sends_only_the_good(
    corpus: Corpus, orthanc_no_j2k: OrthancPeer, redis_server: RedisPeer, tmp_path: Path
) -> None:
    report = tmp_path / "run.json"
    log = tmp_path / "worker.log"
    with LocalWorkers(redis_server.url, 2, loglevel="INFO", logfile=str(log)):
        t0 = time.monotonic()
        proc = start_migrator_run(
            corpus.root,
            *common_args(("127.0.0.1", orthanc_no_j2k.dicom_port), "ORTHANC"),
            "--redis-url",
            redis_server.url,
            "--batch-files",
            "4",
            "--report",
            report,
        )
        code, out = finish(proc, timeout=120)
        elapsed = time.monotonic() - t0
    assert code == 1, out
    assert elapsed < 60, (elapsed, out)
    ledger = only_job(redis_server.client())
    counts = assert_invariant(ledger)
    assert counts["planned"] == len(corpus.expect), counts
    _check_report(corpus, load_report(report))
    _check_arrived(corpus, orthanc_no_j2k)
    worker_log = log.read_text(errors="replace")
    assert "Traceback" not in worker_log, worker_log[-4000:]


# -- a 2 GB file ------------------------------------------------------------------------------


def _write_2gb_file(path: Path) -> int:
    """2048 frames of 1024 x 1024 x 8 bits (2 GiB of pixels: past 2^31, the largest signed
    32-bit length), the pixels a sparse run of zeros so it costs no disk and little time."""
    frames = 2048
    ds = synth.make_dataset("SC", rows=1024, cols=1024, bits=8, frames=1, seed=2048)
    del ds.PixelData
    ds.NumberOfFrames = frames
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7.2")
    ds.save_as(path, enforce_file_format=True)
    length = frames * 1024 * 1024
    with open(path, "ab") as f:  # (7FE0,0010) OB, explicit VR LE, then the value
        f.write(b"\xe0\x7f\x10\x00OB\x00\x00" + length.to_bytes(4, "little"))
        f.truncate(f.tell() + length)
    return path.stat().st_size


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("big") / "two gigabytes.dcm"
    assert _write_2gb_file(path) > 2 * 1024**3
    yield path
    path.unlink()


@pytest.mark.slow
def test_a_2gb_file_is_stored_with_flat_memory(
    big_file: Path, storescp_factory: Callable[..., StoreScpPeer], tmp_path: Path
) -> None:
    peer = storescp_factory(ignore=True)
    report = tmp_path / "big.json"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migrator",
            "store",
            *common_args(("127.0.0.1", peer.port), "STORESCP"),
            str(big_file),
            "--report",
            str(report),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak_kb = 0
    while child.poll() is None:  # VmHWM of the process image after exec (see test_store)
        try:
            peak_kb = max(peak_kb, _peak_rss_kb(child.pid))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.02)
    text = child.communicate(timeout=120)[0]
    assert child.returncode == 0, text
    [entry] = load_report(report)["files"]
    assert entry["state"] == "stored" and entry["bytes"] == big_file.stat().st_size
    assert 0 < peak_kb < 150 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"


@pytest.mark.slow
def test_a_2gb_file_is_sent_by_a_worker_with_flat_memory(
    big_file: Path,
    storescp_factory: Callable[..., StoreScpPeer],
    redis_server: RedisPeer,
    tmp_path: Path,
) -> None:
    peer = storescp_factory(ignore=True)
    report = tmp_path / "big.json"
    with LocalWorkers(redis_server.url, 1, logfile=str(tmp_path / "w.log")) as workers:
        [pool_child] = children(workers.pid)
        before_kb = _peak_rss_kb(pool_child)
        proc = start_migrator_run(
            big_file,
            *common_args(("127.0.0.1", peer.port), "STORESCP"),
            "--redis-url",
            redis_server.url,
            "--report",
            report,
        )
        code, out = finish(proc, timeout=120)
        after_kb = _peak_rss_kb(pool_child)  # the same child sent it (one process)
    assert code == 0, out
    [entry] = load_report(report)["files"]
    assert entry["state"] == "stored", entry
    assert assert_invariant(only_job(redis_server.client()))["stored"] == 1
    # The child's peak grew by far less than the file (the pool child's own baseline, a
    # Python with Celery and pydicom loaded, is what it is before any batch).
    assert after_kb - before_kb < 100 * 1024, (before_kb, after_kb)


# -- the inspection checks one by one (fast, no peers) ----------------------------------------


def _file_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_a_cut_encapsulated_file_is_truncated_and_trailing_elements_are_fine(
    tmp_path: Path,
) -> None:
    ds = _dataset("j2k-unit", transfer_syntax=JPEG2000Lossless)
    whole = _file_bytes(ds)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[:-1500])
    with pytest.raises(TruncatedError, match="fragment 1 of the encapsulated Pixel Data"):
        inspect_file(str(cut))
    # Without the end of the file at hand (an S3 head), this check is left out.
    assert inspect_bytes(whole[:4096], size=len(whole) - 1500).sop_instance_uid
    # An element after Pixel Data: the last 8 bytes are not the delimiter, the walk finds it.
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 16)  # Data Set Trailing Padding
    padded = tmp_path / "padded.dcm"
    padded.write_bytes(_file_bytes(ds))
    assert inspect_file(str(padded)).transfer_syntax == JPEG2000Lossless


def test_truncation_is_found_past_a_header_longer_than_the_first_read(tmp_path: Path) -> None:
    """200 KB of private data between the UIDs and Pixel Data: the walk follows the lengths
    with a few positioned reads instead of reading the header whole."""
    ds = _dataset("long-header")
    ds.add_new(0x00291010, "OB", b"\1" * 200_000)  # sorts after (0028,xxxx)
    data = _file_bytes(ds)
    ok, cut = tmp_path / "ok.dcm", tmp_path / "cut.dcm"
    ok.write_bytes(data)
    cut.write_bytes(data[:-100])
    assert inspect_file(str(ok)).sop_instance_uid == ds.SOPInstanceUID
    with pytest.raises(TruncatedError, match="Pixel Data declares 8192 bytes"):
        inspect_file(str(cut))


def test_a_head_is_enough_when_pixel_data_starts_in_it() -> None:
    """S3 objects are inspected from their first bytes and their size: a Pixel Data length
    running past the object's end shows there already."""
    data = _file_bytes(_dataset("s3-head"))
    with pytest.raises(TruncatedError, match="file holds only"):
        inspect_bytes(data[:2000], size=len(data) - 10)


@pytest.mark.parametrize(
    ("rows", "cols", "frames", "length", "truncated"),
    [
        (10, 10, 1, 14, False),  # 100 bits -> 13 bytes, padded to even length
        (10, 10, 3, 38, False),  # 300 bits -> 38 bytes: frames are not padded one by one
        (10, 10, 3, 36, True),
    ],
)
def test_one_bit_pixel_data_is_measured_in_bits(
    tmp_path: Path, rows: int, cols: int, frames: int, length: int, truncated: bool
) -> None:
    ds = _dataset("1bit", rows=rows, cols=cols)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.NumberOfFrames = frames
    ds.PixelData = b"\xaa" * length
    ds["PixelData"].VR = "OB"
    path = tmp_path / "bits.dcm"
    path.write_bytes(_file_bytes(ds))
    if truncated:
        with pytest.raises(TruncatedError, match=r"need 38\b"):
            inspect_file(str(path))
    else:
        assert inspect_file(str(path)).sop_instance_uid == ds.SOPInstanceUID


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "SC_ybr_full_422_uncompressed.dcm",  # 4:2:2: two values per pixel
        "SC_rgb_jpeg_dcmtk.dcm",
        "JPEG2000.dcm",
        "MR_small_RLE.dcm",
        "image_dfl.dcm",
        "badVR.dcm",  # Number of Frames "1A"
        "ExplVR_BigEndNoMeta.dcm",
    ],
)
def test_sound_files_pass_the_damage_checks(name: str) -> None:
    from pydicom.data import get_testdata_file

    assert inspect_file(str(get_testdata_file(name))).sop_instance_uid


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("MR_truncated.dcm", "Pixel Data declares 8192 bytes, but the file holds only 8130"),
        ("rtplan_truncated.dcm", r"element \(300A,00B0\) declares 976 bytes"),
    ],
)
def test_pydicoms_truncated_samples_are_caught(name: str, match: str) -> None:
    """pydicom reads both without a warning (TESTING.md §9)."""
    from pydicom.data import get_testdata_file

    with pytest.raises(TruncatedError, match=match):
        inspect_file(str(get_testdata_file(name)))


def test_a_named_pipe_given_by_name_is_refused_without_blocking(tmp_path: Path) -> None:
    """Opening a FIFO for reading waits for a writer: forever, for an archive walker."""
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    source = FileSource(str(fifo))
    [item] = source.iter_items()
    result = inspect_item(source, item)
    assert refusal(result) == (State.SKIPPED, "not a regular file: a named pipe (FIFO); not read")


def test_missing_sop_uids_fail_dicom_and_skip_what_only_looks_like_a_dataset(
    tmp_path: Path,
) -> None:
    ds = _dataset("no-uids")
    del ds.SOPInstanceUID
    bare = tmp_path / "bare.dcm"
    synth.write_dataset(ds, bare, no_meta=True)
    with pytest.raises(InvalidInstanceError, match="no SOP Instance UID"):
        inspect_file(str(bare))  # other UIDs found: DICOM, damaged
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x08\x00\x10\x00" + b"\x04\x00\x00\x00" + b"abcd" * 10)
    with pytest.raises(NotDicomError, match="not a DICOM file"):
        inspect_file(str(junk))  # reads as a dataset, holds no UID at all


def test_a_sub_folder_that_cannot_be_listed_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root lists every folder, so the refusal is simulated; what matters is that the walk
    goes on with the siblings and the folder is reported, not the whole source failed."""
    for name in ("a", "b", "c"):
        synth.write_corpus(tmp_path / "top" / name, count=1, size="tiny", seed=ord(name))
    locked = str(tmp_path / "top" / "b")
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    source = FileSource(str(tmp_path / "top"), recursive=True)
    items = list(source.iter_items())
    assert [os.path.relpath(i.uri, tmp_path / "top") for i in items] == [
        "a/000000.dcm",
        "b",
        "c/000000.dcm",
    ]
    assert refusal(inspect_item(source, items[1])) == (
        State.FAILED,
        "a folder that cannot be listed (Permission denied): nothing in it was sent",
    )


def test_a_file_cut_anywhere_is_never_sent_as_whole() -> None:
    """Every cut point of a CT file: refused (truncated, or not DICOM when the cut leaves no
    dataset), except where the cut falls exactly between two elements before Pixel Data's
    module is complete. That leaves a well-formed shorter dataset, which no header check can
    tell from one written that way (and which lacks Rows, Columns or Bits Allocated, or the
    Study/Series UIDs, so the receiver gets nothing it would wait on)."""
    data = _file_bytes(_dataset("cut-anywhere"))
    # Where each top-level element ends, as pydicom reads them: after the File Meta (its
    # group length is the value of the element at byte 132), then element by element.
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    fp = io.BytesIO(data)
    fp.seek(meta_end)
    element_ends = {meta_end} | {
        raw.value_tell + raw.length
        for raw in data_element_generator(fp, is_implicit_VR=False, is_little_endian=True)
        if isinstance(raw, RawDataElement)
    }
    pixel_header = data.rindex(b"\xe0\x7f\x10\x00")
    sent = []
    for cut in range(1, len(data)):
        try:
            header = inspect_bytes(data[:cut])  # the whole (cut) file, as for a local one
        except SourceError:
            continue
        if refusal(header) is None:
            sent.append(cut)
    assert sent, "no element boundary at all? the test is broken"
    assert all(cut in element_ends and cut <= pixel_header for cut in sent), sent


def test_a_cut_after_pixel_data_is_truncated_too(tmp_path: Path) -> None:
    """pydicom's CT_small.dcm ends with Data Set Trailing Padding after Pixel Data: a cut in
    it leaves an element the receiver would wait for the rest of."""
    from pydicom.data import get_testdata_file

    data = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-50])
    with pytest.raises(TruncatedError, match=r"element \(FFFC,FFFC\) declares 126 bytes"):
        inspect_file(str(cut))
