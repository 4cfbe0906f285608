"""The synthetic corpora the bench sends, made deterministically by ``migrator.synth``."""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.measure import SetupError, log

SIZES = ("tiny", "small", "medium", "large")
PROBE_NAME = "probe-1"
#: The RSS probe's file: 1024 frames of 1024 x 1024 x 8 bits, 1 GiB of pixels (1.07 GB).
BIG_FRAMES = 1024


@dataclass
class FileSet:
    dir: Path
    files: int
    bytes: int


@dataclass
class Corpus:
    name: str
    size: str
    full: FileSet
    subset: FileSet  # what the pynetdicom CLI sends (capped: it runs at tens of files/s)


def scan(directory: Path) -> FileSet:
    files = [p for p in directory.rglob("*") if p.is_file()]
    return FileSet(directory, len(files), sum(p.stat().st_size for p in files))


def link_subset(src_files: Sequence[Path], dest: Path) -> FileSet:
    """Hard links (copies across file systems) of ``src_files`` in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in src_files:
        target = dest / f.name
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
    return scan(dest)


def parse_corpus_spec(spec: str) -> tuple[str, int]:
    size, sep, count = spec.partition(":")
    if not sep or size not in SIZES or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(
            f"bad corpus {spec!r}: expected SIZE:COUNT with SIZE one of {', '.join(SIZES)}"
        )
    return size, int(count)


def prepare_corpus(
    size: str, count: int, root: Path, seed: int, subset_root: Path, subset_max: int
) -> Corpus:
    """Generate (or reuse) ``count`` files of ``size`` under ``root`` and a capped subset.

    ``write_corpus`` is deterministic (same seed, same bytes), so a directory that already
    holds exactly ``count`` files from an earlier ``--corpus-dir`` run is reused as is.
    """
    from migrator.synth import write_corpus

    name = f"{size}-{count}"
    directory = root / f"{name}-seed{seed}"
    existing = scan(directory) if directory.is_dir() else None
    if existing is None or existing.files != count:
        t0 = time.perf_counter()
        write_corpus(directory, count=count, size=size, seed=seed)
        log(f"generated {name} in {time.perf_counter() - t0:.1f} s: {directory}")
    else:
        log(f"reusing {name}: {directory}")
    full = scan(directory)
    if full.files != count:
        raise SetupError(f"{directory} holds {full.files} files, expected {count}")
    if subset_max >= count:
        return Corpus(name, size, full, full)
    ordered = sorted(p for p in directory.rglob("*") if p.is_file())
    subset = link_subset(ordered[:subset_max], subset_root / name)
    return Corpus(name, size, full, subset)


def write_big_file(root: Path, seed: int) -> FileSet:
    """One ~1 GB multi-frame Secondary Capture file for the RSS probe, in a directory of its own.

    Made as tests/test_bad_inputs.py makes its 2 GB file: the header by ``migrator.synth`` with
    one frame, then the Pixel Data element written by hand and its value left as a sparse run of
    zeros (``truncate``), so it takes a second and no disk; deterministic like the corpora, and
    reused from ``--corpus-dir``. Memory use of a sender does not depend on the pixel values.
    """
    from pydicom.uid import UID

    from migrator import synth

    directory = root / f"big-1gb-seed{seed}"
    path = directory / "big.dcm"
    length = BIG_FRAMES * 1024 * 1024
    if path.is_file() and path.stat().st_size > length:
        log(f"reusing the RSS probe's file: {path}")
        return scan(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ds = synth.make_dataset("SC", rows=1024, cols=1024, bits=8, frames=1, seed=seed)
    del ds.PixelData
    ds.NumberOfFrames = BIG_FRAMES
    multi_frame_byte_sc = UID("1.2.840.10008.5.1.4.1.1.7.2")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = multi_frame_byte_sc
    ds.save_as(path, enforce_file_format=True)
    with open(path, "ab") as f:  # (7FE0,0010) OB, explicit VR little endian, then the value
        f.write(b"\xe0\x7f\x10\x00OB\x00\x00" + length.to_bytes(4, "little"))
        f.truncate(f.tell() + length)
    log(f"wrote the RSS probe's file ({path.stat().st_size / 1e9:.2f} GB, sparse): {path}")
    return scan(directory)


def warm_page_cache(fileset: FileSet) -> None:
    """Read every file once so the first sender does not pay for cold reads."""
    for p in fileset.dir.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                while fh.read(1 << 20):
                    pass
