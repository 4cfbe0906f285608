"""Transfer syntax names users can type (``--transfer-syntax``) and their UIDs."""

from __future__ import annotations

from migrator.errors import ConfigError
from migrator.validation import is_valid_uid

# UIDs written out (PS3.6) rather than taken from pydicom: importing pydicom costs ~0.3 s at
# every start of the command line, and most runs never need it.
ALIASES: dict[str, str] = {
    "implicit": "1.2.840.10008.1.2",
    "explicit": "1.2.840.10008.1.2.1",
    "big-endian": "1.2.840.10008.1.2.2",
    "deflate": "1.2.840.10008.1.2.1.99",
    "jpeg": "1.2.840.10008.1.2.4.50",
    "jpeg-lossless": "1.2.840.10008.1.2.4.70",
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "j2k": "1.2.840.10008.1.2.4.91",
    "j2k-lossless": "1.2.840.10008.1.2.4.90",
    "rle": "1.2.840.10008.1.2.5",
}


def resolve(text: str) -> str:
    """A UID, an alias above, or a pydicom keyword (``ExplicitVRLittleEndian``) -> UID."""
    value = text.strip()
    if value.lower() in ALIASES:
        return ALIASES[value.lower()]
    from pydicom import uid as pd_uid

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
