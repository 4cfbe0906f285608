"""Tag coercion during migration (issue 18): rules that change elements on the way.

* :mod:`~migrator.coerce.rules`: the rules file, read and checked with line numbers;
* :mod:`~migrator.coerce.tables`: mapping tables (CSV old -> new values);
* :mod:`~migrator.coerce.paths`: element paths (keywords, tags, inside sequences);
* :mod:`~migrator.coerce.vr`: values against their VR and the file's character set;
* :mod:`~migrator.coerce.elements`: the header region parsed and written back, no pydicom;
* :mod:`~migrator.coerce.apply`: the rules applied to a region (what fired, a digest);
* :mod:`~migrator.coerce.coercer`: the transform; :mod:`~migrator.coerce.splice`: reading.

The sender's hook is ``migrator.transfer.transform.make_transform(settings)``.
"""

from __future__ import annotations

from migrator.coerce.errors import CoercionError, CoercionSkipped

__all__ = ["CoercionError", "CoercionSkipped"]
