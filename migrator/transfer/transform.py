"""The transform hook: where tag coercion goes, between re-inspection and sending.

A transform takes the file's header and its payload and returns what to send. The identity
returns both objects unchanged, and that is what keeps the zero-copy path: the DIMSE
connection streams a ``Payload`` with a path straight from the page cache (os.sendfile), so
a transform that changes nothing must hand back the same payload, not a copy of its bytes.
The coercing transform (``--coerce``, migrator/coerce) rewrites only the elements before
Pixel Data and keeps streaming the rest.
"""

from __future__ import annotations

from collections.abc import Callable

from migrator.dicomfile import DicomHeader
from migrator.settings import Settings
from migrator.sources.base import Payload

Transform = Callable[[DicomHeader, Payload], tuple[DicomHeader, Payload]]


def identity(header: DicomHeader, payload: Payload) -> tuple[DicomHeader, Payload]:
    return header, payload


#: Rules already loaded in this process, by (path, digest): a worker reads them once
_LOADED: dict[tuple[str, str], Transform] = {}


def make_transform(settings: Settings) -> Transform:
    """The transform of ``settings``: the identity, or the ``--coerce`` rules.

    Every sender (store, run, each worker) loads the rules file named in the settings and
    checks that its digest is the one the command computed when it checked the file: a file
    changed since then would send other values than planned, so every file then fails with
    the reason instead (not the batch: the worker is fine, its copy of the rules is not)."""
    if not settings.coerce:
        return identity
    key = (settings.coerce, settings.coerce_digest)
    found = _LOADED.get(key)
    if found is None:
        found = _LOADED[key] = _load(settings.coerce, settings.coerce_digest)
    return found


def _load(path: str, digest: str) -> Transform:
    from migrator.coerce import CoercionError
    from migrator.coerce.coercer import Coercer
    from migrator.coerce.rules import CHECKED, RulesError, load_rules

    try:
        rules = CHECKED.get((path, digest)) or load_rules(path)
        problem = ""
        if digest and rules.digest != digest:
            problem = f"not sent: {path} (or a table) changed since the command checked it"
    except RulesError as exc:
        problem = f"not sent: the rules cannot be used on this sender: {exc}"
    if not problem:
        return Coercer(rules)

    def refuse(header: DicomHeader, payload: Payload) -> tuple[DicomHeader, Payload]:
        raise CoercionError(problem)

    return refuse
