"""Where `migrator scp` puts a received instance, and how it gets there safely.

Three rules, because everything in a C-STORE comes from an untrusted peer:

* **Path safety.** Study, Series and SOP Instance UIDs become directory and file names.
  Each must be a syntactically valid UID (PS3.5 §9.1: digits and dots, at most 64
  characters), which rules out ``/``, ``..``, NUL and every other character a path
  could be built from. The final path is then resolved (following any symlink already
  in the tree) and must still lie under the output directory.
* **Atomicity.** The file is written to a hidden temporary name in its final directory
  and renamed over the final name with ``os.replace``, so a crash leaves at most a
  ``.*.part`` file, never a half-written ``<SOPInstanceUID>.dcm``. There is no fsync:
  a power cut may lose a file the sender was told is stored, which is acceptable for
  a test and staging receiver, not for an archive of record.
* **No re-encoding.** The dataset bytes are copied as received (in the negotiated
  transfer syntax) behind a File Meta group we write ourselves (PS3.10 §7.1).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from migrator.dul.pdu import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from migrator.errors import ConfigError
from migrator.validation import ae_title, is_valid_uid

# pydicom (~0.3 s of imports) only where the pydicom-built meta is asked for: the receiver
# itself writes its meta without it (migrator.scp.incoming.meta_bytes).
if TYPE_CHECKING:
    from pydicom.dataset import FileMetaDataset


def _file_mode() -> int:
    # mkstemp creates 0600 files; received files should get the usual umask-based mode
    # so that other tools (viewers, importers) can read them. Read the umask once, at
    # import, in the main thread: os.umask() is process-wide, so it must not race.
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()
#: PS3.10 §7.1: a 128-byte preamble (zeros here) and the "DICM" prefix.
PREAMBLE = b"\x00" * 128 + b"DICM"
_COPY_CHUNK = 1024 * 1024


class UnsafeUIDError(ValueError):
    """A UID from the peer cannot be used as a path component (the instance is refused)."""


def checked_uid(value: str, what: str) -> str:
    """``value`` when it is a valid UID; raises UnsafeUIDError naming ``what`` otherwise."""
    if not value:
        raise UnsafeUIDError(f"{what} is missing")
    if not is_valid_uid(value):
        # repr() escapes control characters; the cap keeps a hostile value out of the log.
        raise UnsafeUIDError(f"{what} {value[:80]!r} is not a valid UID")
    return value


def relative_path(study_uid: str, series_uid: str, sop_uid: str, organize: bool) -> PurePosixPath:
    """``<Study>/<Series>/<SOP>.dcm`` (organized) or ``<SOP>.dcm`` (flat).

    Raises UnsafeUIDError when a UID that the layout needs is missing or invalid.
    """
    return PurePosixPath(*relative_parts(study_uid, series_uid, sop_uid, organize))


def relative_parts(
    study_uid: str, series_uid: str, sop_uid: str, organize: bool
) -> tuple[str, ...]:
    """``relative_path``'s components (what the receiver uses: no pathlib per file)."""
    name = checked_uid(sop_uid, "SOP Instance UID") + ".dcm"
    if not organize:
        return (name,)
    return (
        checked_uid(study_uid, "Study Instance UID"),
        checked_uid(series_uid, "Series Instance UID"),
        name,
    )


def resolve_under(root: Path, relative: PurePosixPath) -> Path:
    """The absolute final path, refusing anything that resolves outside ``root``.

    Belt and braces after ``relative_path``: this also catches a symlink planted
    inside the output tree that points elsewhere.
    """
    base = root.resolve()
    final = (base / relative).resolve()
    if not final.is_relative_to(base) or final == base:
        raise UnsafeUIDError(f"{relative} resolves outside the output directory")
    return final


def file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str | None
) -> FileMetaDataset:
    """The File Meta group for a received instance (PS3.10 §7.1, Table 7.1-1)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID

    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    if source_ae:
        # An odd calling AE title is not worth refusing the instance for: leave it out.
        with contextlib.suppress(ConfigError):
            meta.SourceApplicationEntityTitle = ae_title(source_ae)
    return meta


def encode_meta(meta: FileMetaDataset) -> bytes:
    """Preamble, prefix and the encoded File Meta group (with its group length)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    write_file_meta_info(buf, meta, enforce_standard=True)
    return PREAMBLE + buf.getvalue()


def write_instance(
    root: Path,
    relative: PurePosixPath,
    source: Path,
    dataset_offset: int,
    meta: FileMetaDataset,
) -> tuple[Path, bool]:
    """Write ``meta`` + the bytes of ``source`` from ``dataset_offset`` to root/relative.

    The copy streams in 1 MiB chunks, so a multi-GB instance never sits in memory.
    Returns the final path and whether it replaced an existing file (a re-sent
    instance: the last copy wins, as with storescp). Raises UnsafeUIDError or OSError;
    on error nothing is left under the final name (an existing file there is untouched).
    """
    final = resolve_under(root, relative)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Re-check after mkdir: a directory created concurrently could be a symlink.
    resolve_under(root, PurePosixPath(final.relative_to(root.resolve())))
    header = encode_meta(meta)
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            out.write(header)
            src.seek(dataset_offset)
            shutil.copyfileobj(src, out, _COPY_CHUNK)
        replaced = final.exists()
        os.replace(tmp_name, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return final, replaced


def check_output_dir(path: Path) -> Path:
    """Create the output directory if needed and prove we can write into it.

    Raises ConfigError with a message fit for the user (run at startup, so a
    misconfigured receiver fails at once instead of at the first C-STORE).
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"output directory {path} exists and is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {path}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise ConfigError(f"output directory {path} is not a directory")
    try:
        # Root ignores permission bits, so os.access would lie: really write a file.
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(
            f"output directory {path} is not writable: {exc.strerror or exc}"
        ) from None
    return path.resolve()
