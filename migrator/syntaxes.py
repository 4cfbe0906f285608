"""Transfer syntax names users can type (``--transfer-syntax``) and their UIDs."""

from __future__ import annotations

from pydicom import uid as pd_uid

from migrator.errors import ConfigError
from migrator.validation import is_valid_uid

ALIASES: dict[str, str] = {
    "implicit": pd_uid.ImplicitVRLittleEndian,
    "explicit": pd_uid.ExplicitVRLittleEndian,
    "big-endian": pd_uid.ExplicitVRBigEndian,
    "deflate": pd_uid.DeflatedExplicitVRLittleEndian,
    "jpeg": pd_uid.JPEGBaseline8Bit,
    "jpeg-lossless": pd_uid.JPEGLosslessSV1,
    "jpeg-ls": pd_uid.JPEGLSLossless,
    "j2k": pd_uid.JPEG2000,
    "j2k-lossless": pd_uid.JPEG2000Lossless,
    "rle": pd_uid.RLELossless,
}


def resolve(text: str) -> str:
    """A UID, an alias above, or a pydicom keyword (``ExplicitVRLittleEndian``) -> UID."""
    value = text.strip()
    if value.lower() in ALIASES:
        return ALIASES[value.lower()]
    if is_valid_uid(value):
        if not pd_uid.UID(value).is_transfer_syntax:
            raise ConfigError(f"{value} is not a known transfer syntax UID")
        return value
    for name in pd_uid.AllTransferSyntaxes:
        if pd_uid.UID(name).keyword.lower() == value.lower():
            return str(name)
    choices = ", ".join(ALIASES)
    raise ConfigError(
        f"unknown transfer syntax {text!r}: give a UID, a pydicom keyword such as "
        f"ExplicitVRLittleEndian, or one of: {choices}"
    )
