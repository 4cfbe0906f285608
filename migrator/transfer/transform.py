"""The transform hook: where tag coercion goes, between re-inspection and sending.

A transform takes the file's header and its payload and returns what to send. The identity
returns both objects unchanged, and that is what keeps the zero-copy path: the DIMSE
connection streams a ``Payload`` with a path straight from the page cache (os.sendfile), so
a transform that changes nothing must hand back the same payload, not a copy of its bytes.
A coercing transform (issue 18) will rewrite only the elements before Pixel Data and keep
streaming the rest.
"""

from __future__ import annotations

from collections.abc import Callable

from migrator.dicomfile import DicomHeader
from migrator.sources.base import Payload

Transform = Callable[[DicomHeader, Payload], tuple[DicomHeader, Payload]]


def identity(header: DicomHeader, payload: Payload) -> tuple[DicomHeader, Payload]:
    return header, payload
