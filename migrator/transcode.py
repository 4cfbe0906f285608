"""Lossless decode + re-encode into an uncompressed transfer syntax.

Used by the sender when the PACS accepted none of the presentation contexts carrying the
file's own transfer syntax (PS3.8 §9.3.2.2: the acceptor picks one TS per context, or rejects
the context). The file is then decoded (pydicom's ``decompress`` with the pylibjpeg plugins;
RLE by pydicom's own decoder; deflate is undone by the reader) and re-encoded as Implicit VR
Little Endian, Explicit VR Little Endian or Explicit VR Big Endian.

What comes back is the **dataset only** (no 128-byte preamble, no ``DICM``, no group 0002):
PS3.7 §6.3.1 / PS3.8 §9.3.5 — a P-DATA-TF PDV carries the data set encoded in the
presentation context's transfer syntax, never the File Meta Information of PS3.10.

Lossy images: decoding a lossy codestream loses nothing more than the original encoder did,
but a PACS receiving an uncompressed image can no longer tell from the transfer syntax that
it was lossy, and site policy often forbids that. So decoding a lossy image is refused unless
the caller allows it (``--allow-lossy``); see :func:`dataset_is_lossy` for the exact rule.

SOP Instance UID: kept. pydicom's ``decompress()`` mints a new one by default; a migration
must not (the destination would store a second instance, and ``verify`` would never match).
A transfer-syntax change is not a new instance (PS3.5 §10; only *new* lossy compression
requires one, PS3.3 C.7.6.1.1.5, and we never compress).
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Iterable
from typing import Any, Final, cast

import numpy as np
import pydicom
from pydicom import uid as pd_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from migrator.errors import ConfigError, PermanentError, SourceError

# --- transfer syntax classification (PS3.5 Annex A, PS3.6 Table A-1) ------------------------

IMPLICIT_LE: Final = str(pd_uid.ImplicitVRLittleEndian)  # 1.2.840.10008.1.2
EXPLICIT_LE: Final = str(pd_uid.ExplicitVRLittleEndian)  # 1.2.840.10008.1.2.1
EXPLICIT_BE: Final = str(pd_uid.ExplicitVRBigEndian)  # 1.2.840.10008.1.2.2 (retired)
DEFLATED_LE: Final = str(pd_uid.DeflatedExplicitVRLittleEndian)  # 1.2.840.10008.1.2.1.99

#: The syntaxes we can encode into, in order of preference (see :func:`choose_target`).
#: Explicit VR first: Implicit VR loses the VR of private elements (they arrive as UN);
#: Big Endian is retired (PS3.5 A.3) and last.
UNCOMPRESSED: Final[tuple[str, ...]] = (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE)

#: (implicit_vr, little_endian) for each target.
_ENCODING: Final[dict[str, tuple[bool, bool]]] = {
    IMPLICIT_LE: (True, True),
    EXPLICIT_LE: (False, True),
    EXPLICIT_BE: (False, False),
}

_JPEG = "1.2.840.10008.1.2.4."

#: Always lossy: JPEG DCT processes (baseline, extended, spectral selection, full
#: progression, hierarchical DCT — most retired, PS3.5 A.4.1), the video syntaxes (MPEG-2,
#: H.264, HEVC; PS3.5 A.4.5–A.4.7) and JPEG XL JPEG recompression (.111: a lossless
#: re-packing of a lossy JPEG).
INHERENTLY_LOSSY: Final[frozenset[str]] = frozenset(
    {_JPEG + n for n in ("50", "51", "52", "53", "54", "55", "56", "59", "60", "61", "62")}
    | {_JPEG + n for n in ("63", "64", "111")}
    | {_JPEG + n for n in ("100", "100.1", "101", "101.1", "102", "102.1", "103", "103.1")}
    | {_JPEG + n for n in ("104", "104.1", "105", "105.1", "106", "106.1", "107", "108")}
)

#: Lossy-capable: the same TS carries lossless or lossy codestreams. JPEG-LS near-lossless
#: (.81, lossless when NEAR=0), JPEG 2000 (.91), JPEG 2000 Part 2 (.93), HTJ2K (.203),
#: JPEG XL (.112). Only Lossy Image Compression = "00" proves these lossless.
POSSIBLY_LOSSY: Final[frozenset[str]] = frozenset(
    {_JPEG + n for n in ("81", "91", "93", "203", "112")}
)

#: Compression method names for (0028,2114) when we must record lossy history ourselves
#: (defined terms, PS3.3 C.7.6.1.1.5.1).
_LOSSY_METHOD: Final[dict[str, str]] = {
    _JPEG + "50": "ISO_10918_1",
    _JPEG + "51": "ISO_10918_1",
    _JPEG + "81": "ISO_14495_1",
    _JPEG + "91": "ISO_15444_1",
    _JPEG + "203": "ISO_15444_15",
}


def is_compressed(ts_uid: str) -> bool:
    """True unless ``ts_uid`` is one of :data:`UNCOMPRESSED`.

    Deflated Explicit VR LE counts as compressed (the whole dataset is zlib-compressed, PS3.5
    A.5) and so does any unknown/private syntax: either way a peer that accepted only plain
    syntaxes cannot receive the file as it is. Use :func:`is_encapsulated` to ask whether the
    *pixel data* is compressed.
    """
    return ts_uid not in UNCOMPRESSED


def is_encapsulated(ts_uid: str) -> bool:
    """True when the pixel data is encapsulated (PS3.5 A.4): decoding needs a codec."""
    uid = pd_uid.UID(ts_uid)
    if uid.is_transfer_syntax:
        return bool(uid.is_encapsulated)
    # Unknown (private or newer than pydicom): every non-native syntax since PS3.5 A.4 is
    # encapsulated, and a codec we do not know fails later with a clear message.
    return ts_uid not in UNCOMPRESSED and ts_uid != DEFLATED_LE


def is_lossy_syntax(ts_uid: str) -> bool:
    """True if ``ts_uid`` can carry lossy-compressed pixel data (inherently or possibly)."""
    return ts_uid in INHERENTLY_LOSSY or ts_uid in POSSIBLY_LOSSY


def dataset_is_lossy(ds: Dataset, ts_uid: str | None = None) -> bool:
    """Whether the image in ``ds`` is (or may be) lossy. The rule, in order:

    1. Lossy Image Compression (0028,2110) == "01" → lossy. PS3.3 C.7.6.1.1.5: once an image
       has been lossy-compressed the flag stays "01" forever, whatever its current TS.
    2. An inherently lossy TS (JPEG baseline .50, extended .51, …) → lossy, even if the flag
       is missing or (wrongly) "00": a DCT codestream cannot be lossless.
    3. A lossy-capable TS (J2K .91, JPEG-LS near-lossless .81, HTJ2K .203, …) → lossy unless
       the flag is exactly "00". Absent flag = unknown = assume lossy (fail safe).
    4. Otherwise → not lossy.

    ``ts_uid`` defaults to the file meta's Transfer Syntax UID.
    """
    flag = str(ds.get("LossyImageCompression", "") or "").strip()
    if flag == "01":
        return True
    ts = ts_uid if ts_uid is not None else _file_ts(ds)
    if ts is None:
        return False
    if ts in INHERENTLY_LOSSY:
        return True
    if ts in POSSIBLY_LOSSY:
        return flag != "00"
    return False


def choose_target(accepted: Iterable[str]) -> str | None:
    """The best uncompressed TS among ``accepted``: Explicit LE, Implicit LE, Explicit BE."""
    acc = {str(a).strip() for a in accepted}
    for ts in UNCOMPRESSED:
        if ts in acc:
            return ts
    return None


# --- errors ----------------------------------------------------------------------------------


class TranscodeError(PermanentError):
    """The dataset could not be decoded or re-encoded (missing codec, corrupt codestream)."""


class LossyDecompressionRefused(TranscodeError):
    """The image is lossy and lossy-to-uncompressed conversion was not allowed."""


# --- transcoding -----------------------------------------------------------------------------


def transcode_file(
    path: str, target_ts: str, *, allow_lossy: bool, source_ts: str | None = None
) -> bytes:
    """Read the DICOM file at ``path`` and return its dataset encoded in ``target_ts``.

    ``source_ts`` gives the syntax of a dataset-only file (no File Meta) or overrides a wrong
    one. Raises :class:`LossyDecompressionRefused`, :class:`TranscodeError`,
    :class:`~migrator.errors.SourceError` (unreadable / not DICOM) or
    :class:`~migrator.errors.ConfigError` (``target_ts`` not uncompressed).
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return transcode_bytes(data, target_ts, allow_lossy=allow_lossy, source_ts=source_ts)


def transcode_bytes(
    data: bytes, target_ts: str, *, allow_lossy: bool, source_ts: str | None = None
) -> bytes:
    """As :func:`transcode_file`, for a DICOM file (or bare dataset) held in memory."""
    _check_target(target_ts)
    ds = _read(data, source_ts)
    return transcode_dataset(ds, target_ts, allow_lossy=allow_lossy, source_ts=source_ts)


def transcode_dataset(
    ds: Dataset, target_ts: str, *, allow_lossy: bool, source_ts: str | None = None
) -> bytes:
    """Decode ``ds`` **in place** if needed and return it encoded in ``target_ts``."""
    _check_target(target_ts)
    ts = source_ts or _file_ts(ds)
    if ts is None:
        raise TranscodeError(
            "cannot transcode: the dataset has no Transfer Syntax UID (no File Meta); "
            "give source_ts"
        )
    src_little_endian = ts != EXPLICIT_BE
    if is_encapsulated(ts) and "PixelData" in ds:
        lossy = dataset_is_lossy(ds, ts)
        if lossy and not allow_lossy:
            raise LossyDecompressionRefused(
                f"refusing to decode lossy image ({_ts_name(ts)}, Lossy Image Compression "
                f"{ds.get('LossyImageCompression', 'absent')!s}) to an uncompressed syntax; "
                "allow lossy conversion to send it"
            )
        _decompress(ds, ts, lossy=lossy)
        # The decoders return arrays in the host's byte order; the other elements were
        # read from a little-endian stream (every encapsulated syntax is explicit LE).
        # On a big-endian host the two would disagree; we do not support that (and no
        # supported platform of ours is big-endian).
        src_little_endian = _native_little_endian()
    # (an unknown syntax counts as encapsulated: pydicom has no decoder for it, and
    # _decompress turns that into a TranscodeError naming the UID)

    implicit_vr, little_endian = _ENCODING[target_ts]
    if little_endian != src_little_endian:
        # pydicom writes OW/OL/OF/OD/OV bytes verbatim ("does not do the byte swapping"):
        # swap them ourselves so the words are big-endian as PS3.5 §7.3 requires.
        _swap_words(ds, bits_allocated=_bits_allocated(ds))

    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit_vr
    fp.is_little_endian = little_endian
    try:
        write_dataset(fp, ds)
    except Exception as exc:  # pydicom raises many types for unencodable values
        raise TranscodeError(
            f"cannot encode dataset as {_ts_name(target_ts)}: {type(exc).__name__}: {exc}"
        ) from exc
    return fp.getvalue()


# --- helpers ---------------------------------------------------------------------------------


def _check_target(target_ts: str) -> None:
    if target_ts not in _ENCODING:
        raise ConfigError(
            f"cannot transcode to {_ts_name(target_ts)}: only Implicit VR Little Endian, "
            "Explicit VR Little Endian and Explicit VR Big Endian are supported targets"
        )


def _ts_name(ts: str) -> str:
    u = pd_uid.UID(ts)
    return f"{u.name} ({ts})" if u.is_transfer_syntax else ts


def _file_ts(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(ts) if ts else None


def _read(data: bytes, source_ts: str | None) -> Dataset:
    try:
        with warnings.catch_warnings():
            # "Expected explicit VR, but found implicit" etc.: we judge the result, not noise
            warnings.simplefilter("ignore")
            # force=True only for a bare dataset (no preamble/DICM): the caller vouched for
            # it by naming its syntax. pydicom infers implicit/explicit and endianness.
            ds = pydicom.dcmread(io.BytesIO(data), force=source_ts is not None)
            if source_ts is not None:
                # decompress() reads the syntax from the file meta
                ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = pd_uid.UID(source_ts)
            # Force full parsing now, so a truncated or corrupt file fails here as a
            # SourceError rather than half-way through encoding.
            for _ in ds.iterall():
                pass
    except Exception as exc:
        raise SourceError(f"cannot parse DICOM: {type(exc).__name__}: {exc}") from exc
    return ds


def _decompress(ds: Dataset, ts: str, *, lossy: bool) -> None:
    """Decode the encapsulated pixel data of ``ds`` in place."""
    # Colour: for *lossy* sources convert YCbCr to RGB, like DCMTK's dcmdjpeg default
    # ("+cp: convert YCbCr to RGB if lossy JPEG"); the values are approximations anyway and
    # RGB is what every viewer handles. For *lossless* sources keep YCbCr (as_rgb=False): the
    # 8-bit YCbCr→RGB conversion rounds, and would turn a lossless decode into a lossy one.
    # (J2K's reversible colour transform YBR_RCT is undone exactly by the codec → RGB either
    # way.)
    _check_codestream_ends(ds, ts)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _quiet.active = True
            try:
                ds.decompress(as_rgb=lossy, generate_instance_uid=False)
            finally:
                _quiet.active = False
    except Exception as exc:
        raise TranscodeError(f"cannot decode pixel data in {_ts_name(ts)}: {_why(exc)}") from exc
    # pydicom upsamples YBR_FULL_422 to full resolution but keeps the name when
    # as_rgb=False; uncompressed YBR_FULL_422 means a *subsampled* layout (PS3.3
    # C.7.6.3.1.2), so name what we actually hold.
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        ds.PhotometricInterpretation = "YBR_FULL"
    # The extended offset table only describes encapsulated fragments (PS3.5 A.4).
    for kw in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if kw in ds:
            delattr(ds, kw)
    # PS3.3 C.7.6.1.1.5: an image that was ever lossy-compressed "shall" say so. Keep that
    # history when the flag is missing and the TS proves it (inherently lossy syntaxes only:
    # for possibly-lossy ones we do not know).
    if ts in INHERENTLY_LOSSY and "LossyImageCompression" not in ds:
        ds.LossyImageCompression = "01"
        method = _LOSSY_METHOD.get(ts)
        if method and "LossyImageCompressionMethod" not in ds:
            ds.LossyImageCompressionMethod = method


#: Syntaxes whose codestream must end with the EOI (JPEG, JPEG-LS: ITU-T T.81 B.2.1) or EOC
#: (JPEG 2000: ISO 15444-1 A.4.4) marker, both 0xFFD9. RLE has no end marker (PS3.5 G.3).
_MARKER_TERMINATED: Final[frozenset[str]] = frozenset(
    {_JPEG + str(n) for n in range(50, 67)}
    | {_JPEG + n for n in ("70", "80", "81", "90", "91", "92", "93", "201", "202", "203")}
)


def _check_codestream_ends(ds: Dataset, ts: str) -> None:
    """Refuse truncated codestreams before decoding them.

    Measured with pylibjpeg-libjpeg 2.5.0: a JPEG lossless (.70) or JPEG-LS (.80) frame cut
    in half -- or to its first 16 bytes -- decodes *without any error* into an image of the
    right size full of garbage. A copy interrupted mid-file would then be "migrated" as a
    silently corrupt image. So every frame must end with 0xFFD9, after stripping the
    trailing 0x00 (PS3.5 A.4 even-length padding) and 0xFF fill bytes some encoders append
    (seen in pydicom's JPEG-lossy.dcm and examples_jpeg2k.dcm).
    """
    if ts not in _MARKER_TERMINATED:
        return
    try:
        nframes = int(ds.get("NumberOfFrames", 1) or 1)
        frames = list(generate_frames(ds.PixelData, number_of_frames=nframes))
    except Exception as exc:
        raise TranscodeError(
            f"cannot split encapsulated pixel data ({_ts_name(ts)}) into frames: "
            f"{type(exc).__name__}: {_one_line(exc)}"
        ) from exc
    for index, frame in enumerate(frames):
        if not frame.rstrip(b"\x00\xff").endswith(b"\xff\xd9"):
            raise TranscodeError(
                f"cannot decode pixel data in {_ts_name(ts)}: frame {index + 1} of "
                f"{len(frames)} is truncated (its codestream does not end with the "
                "0xFFD9 end-of-image marker)"
            )


#: What pydicom puts before the per-plugin reasons when every decoder failed
_ALL_PLUGINS_FAILED = "Unable to decode as exceptions were raised by all available plugins:"


def _why(exc: BaseException) -> str:
    """The decoders' own words: "pylibjpeg: Error decoding the J2K data: ..." (pydicom's
    RuntimeError wrapping them adds nothing), else the exception's type and message."""
    text = _one_line(exc)
    if isinstance(exc, RuntimeError) and text.startswith(_ALL_PLUGINS_FAILED):
        return text[len(_ALL_PLUGINS_FAILED) :].strip() or text
    return f"{type(exc).__name__}: {text}"


class _QuietWhileDecoding(logging.Filter):
    """pydicom logs every failed decoding plugin with a full traceback (``LOGGER.exception``)
    before it raises; we raise a TranscodeError with the same words, so while *we* decode
    the traceback is noise on the console and in worker logs. Other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and getattr(_quiet, "active", False))


_quiet = threading.local()
logging.getLogger("pydicom.pixels.decoders.base").addFilter(_QuietWhileDecoding())


def _one_line(exc: BaseException, limit: int = 400) -> str:
    # pydicom puts the per-plugin reasons on the following lines; keep them, on one line
    text = " ".join(str(exc).split()) or "(no message)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bits_allocated(ds: Dataset) -> int:
    try:
        return int(ds.get("BitsAllocated", 16) or 16)
    except (TypeError, ValueError):
        return 16


def _native_little_endian() -> bool:
    return bool(np.little_endian)


#: bytes per word for the VRs whose value is a stream of binary words (PS3.5 §6.2)
_WORD: Final[dict[str, int]] = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
_PIXEL_DATA_TAG: Final = 0x7FE00010


def _swap_words(ds: Dataset, *, bits_allocated: int) -> None:
    """Byte-swap every binary-word value (OW/OL/OF/OD/OV) in ``ds``, recursively.

    Pixel Data in OW with Bits Allocated 32/64 is swapped per sample (4/8 bytes), which is how
    pydicom reads big-endian pixel data; otherwise OW swaps 16-bit words (PS3.5 §7.3). OB and
    UN are byte streams and are left alone.
    """
    for elem in ds:
        if elem.VR == "SQ":
            for item in cast(Sequence, elem.value):
                _swap_words(
                    item,
                    bits_allocated=_bits_allocated(item)
                    if "BitsAllocated" in item
                    else bits_allocated,
                )
            continue
        value: Any = elem.value
        if not isinstance(value, bytes | bytearray) or not value:
            continue
        vr = str(elem.VR)
        if vr in ("OB or OW", "US or OW"):
            vr = "OW"  # from an implicit-VR source; written as OW (PS3.5 A.1 note)
            elem.VR = vr
        size = _WORD.get(vr)
        if size is None:
            continue
        if elem.tag == _PIXEL_DATA_TAG and vr == "OW" and bits_allocated in (32, 64):
            size = bits_allocated // 8
        if len(value) % size:
            continue  # not a whole number of words: leave it rather than corrupt it
        elem.value = np.frombuffer(value, dtype=f"u{size}").byteswap().tobytes()
