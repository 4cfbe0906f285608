"""UID names without importing pydicom: the same names as pydicom's, at a fraction of the cost."""

from __future__ import annotations

import subprocess
import sys

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import UID

from migrator import uidnames


def test_every_registered_uid_has_pydicoms_name_and_others_keep_their_uid() -> None:
    # pynetdicom, once imported (other tests do), adds a few newer UIDs (JPEG XL...) to
    # pydicom's dictionary in memory; the file we read has pydicom's own ~500.
    table = uidnames._table()
    assert len(table) > 400
    assert set(table) <= set(UID_dictionary)
    for uid in table:
        assert uidnames.name(uid) == UID(uid).name, uid
    assert uidnames.name("1.2.840.10008.5.1.4.1.1.2") == "CT Image Storage"
    assert uidnames.name("1.2.826.0.1.3680043.9.9999.1") == "1.2.826.0.1.3680043.9.9999.1"


def test_naming_does_not_import_pydicom() -> None:
    code = (
        "import sys; from migrator import uidnames; "
        "assert uidnames.name('1.2.840.10008.5.1.4.1.1.2') == 'CT Image Storage'; "
        "print('pydicom' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
