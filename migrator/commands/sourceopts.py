"""Options of DICOMweb connections beyond the URL, and of query-capable sources.

* ``dicomweb_https_options``: a custom CA and a client certificate (mutual TLS) for an
  ``https://`` ``--dicomweb`` destination.
* ``source_options``: for ``dicomweb+https://`` sources, credentials (bearer token or basic
  auth, from files), a custom CA and a client certificate, and which studies to list (a
  StudyDate window, a modality, the server's result cap).

Only file paths go into a job's settings (they are stored in the ledger and printed in
reports); each sender reads the files itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from migrator.commands.common import AETitle, _abspath, fail_config, opt
from migrator.errors import ConfigError

if TYPE_CHECKING:
    from migrator.settings import Settings
    from migrator.sources.windows import StudyQuery

F = TypeVar("F", bound=Callable[..., Any])

_FILE = click.Path(dir_okay=False)


Decorator = Callable[[Any], Any]


def _apply(func: F, decorators: Sequence[Decorator]) -> F:
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _tls_trio(prefix: str, env: str, what: str) -> list[Decorator]:
    return [
        opt(
            f"--{prefix}-ca",
            env=f"{env}_CA",
            type=_FILE,
            metavar="FILE",
            default=None,
            help=f"PEM bundle of the CA(s) that signed {what}'s https certificate "
            "(default: the system's).",
        ),
        opt(
            f"--{prefix}-cert",
            env=f"{env}_CERT",
            type=_FILE,
            metavar="FILE",
            default=None,
            help=f"Our client certificate (PEM; may hold the key) for {what} (mutual TLS).",
        ),
        opt(
            f"--{prefix}-key",
            env=f"{env}_KEY",
            type=_FILE,
            metavar="FILE",
            default=None,
            help=f"Private key of --{prefix}-cert when in a file of its own.",
        ),
    ]


def dicomweb_https_options(func: F) -> F:
    return _apply(func, _tls_trio("dicomweb", "DICOMWEB", "--dicomweb"))


def source_options(func: F) -> F:
    return _apply(
        func,
        [
            opt(
                "--source-token-file",
                env="SOURCE_TOKEN_FILE",
                type=_FILE,
                metavar="FILE",
                default=None,
                help="dicomweb+ sources: file holding a bearer token, read at each request "
                "(a token refreshed in place is used). Only the path is stored.",
            ),
            opt(
                "--source-basic-auth-file",
                env="SOURCE_BASIC_AUTH_FILE",
                type=_FILE,
                metavar="FILE",
                default=None,
                help="dicomweb+ sources: file holding user:password (HTTP basic auth).",
            ),
            *_tls_trio("source", "SOURCE", "a dicomweb+https:// source"),
            opt(
                "--source-calling-ae",
                env="SOURCE_CALLING_AE",
                type=AETitle(),
                default=None,
                help="dimse:// sources: our AE title towards the old PACS (default: "
                "--calling-ae); it must know it (and allow it C-GET) to send instances.",
            ),
            opt(
                "--source-rate-limit",
                env="SOURCE_RATE_LIMIT",
                type=click.FloatRange(min=0.001),
                default=None,
                metavar="N",
                help="dimse:// sources (jobs: run, plan): at most N instances fetched per "
                "second from the old PACS, all workers of the fleet together (its own limit, "
                "apart from the destination's --rate-limit). E.g. --source-rate-limit 20",
            ),
            opt(
                "--source-max-associations",
                env="SOURCE_MAX_ASSOCIATIONS",
                type=click.IntRange(1),
                default=None,
                metavar="N",
                help="dimse:// sources (jobs: run, plan): at most N retrieving (C-GET or "
                "C-MOVE) associations open to the old PACS at once, fleet-wide; the planner's "
                "and verify's one C-FIND association come on top. "
                "E.g. --source-max-associations 2",
            ),
            opt(
                "--retrieve",
                "source_retrieve",
                env="RETRIEVE",
                type=click.Choice(["get", "move", "auto"]),
                default="auto",
                show_default=True,
                help="dimse:// sources: fetch by C-GET, by C-MOVE to our own Storage SCP "
                "(--move-ae, --move-port), or auto: C-GET, and C-MOVE when the source "
                "refuses C-GET. Example: --retrieve move --move-ae MIGRATOR-MOVE "
                "--move-port 11113",
            ),
            opt(
                "--move-ae",
                env="MOVE_AE",
                type=AETitle(),
                default=None,
                help="dimse:// sources, C-MOVE: the AE title of our Storage SCP; the source "
                "must know it with this host and --move-port (Orthanc: DicomModalities). "
                "Default: --source-calling-ae.",
            ),
            opt(
                "--move-port",
                env="MOVE_PORT",
                type=click.IntRange(1, 65535),
                default=None,
                help="dimse:// sources, C-MOVE: the TCP port our Storage SCP listens on while "
                "a move runs (one move at a time per host and port). Example: 11113",
            ),
            opt(
                "--from",
                "date_from",
                env="FROM",
                default=None,
                metavar="DATE",
                help="Query sources (dicomweb+, dimse://): only studies with a StudyDate on or "
                "after DATE (YYYY-MM-DD). Studies without a StudyDate are listed only when neither "
                "--from nor --to is given.",
            ),
            opt(
                "--to",
                "date_to",
                env="TO",
                default=None,
                metavar="DATE",
                help="Query sources: only studies with a StudyDate on or before DATE.",
            ),
            opt(
                "--modality",
                env="MODALITY",
                default=None,
                help="Query sources: only studies with this modality (ModalitiesInStudy).",
            ),
            opt(
                "--find-limit",
                env="FIND_LIMIT",
                type=click.IntRange(2),
                default=None,
                help="Query sources: the most results the server returns for one query whatever "
                "the paging; a date window returning that many is split in two, "
                "down to one day, so that no study is missed.",
            ),
        ],
    )


def https_fields(o: dict[str, Any]) -> dict[str, Any]:
    """Settings fields from ``dicomweb_https_options`` and ``source_options`` (absent
    options: not given), paths made absolute (a job's workers read them)."""
    if o.get("source_token_file") and o.get("source_basic_auth_file"):
        fail_config("give --source-token-file or --source-basic-auth-file, not both")
    names = [
        "dicomweb_ca",
        "dicomweb_cert",
        "dicomweb_key",
        "source_token_file",
        "source_basic_auth_file",
        "source_ca",
        "source_cert",
        "source_key",
    ]
    fields: dict[str, Any] = {n: _abspath(o.get(n)) for n in names}
    fields["source_calling_ae"] = o.get("source_calling_ae")
    fields["source_rate_limit"] = o.get("source_rate_limit")
    fields["source_max_associations"] = o.get("source_max_associations")
    fields["source_retrieve"] = o.get("source_retrieve") or "auto"
    fields["move_ae"] = o.get("move_ae")
    fields["move_port"] = o.get("move_port")
    if fields["source_retrieve"] == "move" and not fields["move_port"]:
        fail_config("--retrieve move needs --move-port (where the source sends the instances)")
    return fields


def check_https(settings: Settings) -> None:
    """Unreadable certificate, key, CA or credential files: exit 2 now, not in a worker."""
    from migrator.dicomweb.auth import authorization

    s = settings
    if (s.dicomweb_ca or s.dicomweb_cert or s.dicomweb_key) and not (s.dicomweb or "").startswith(
        "https://"
    ):
        fail_config("--dicomweb-ca, --dicomweb-cert and --dicomweb-key need an https:// --dicomweb")
    for prefix, cert, key in (
        ("--dicomweb", s.dicomweb_cert, s.dicomweb_key),
        ("--source", s.source_cert, s.source_key),
    ):
        if key and not cert:
            fail_config(f"{prefix}-key needs {prefix}-cert (the certificate of that key)")
    try:
        for tls in (settings.dicomweb_tls, settings.source_tls):
            if tls is not None:
                tls.client_context()
        authorization(
            settings.source_token_file,
            settings.source_basic_auth_file,
            options=("--source-token-file", "--source-basic-auth-file"),
        )
    except ConfigError as exc:
        fail_config(str(exc))


def study_query(o: dict[str, Any]) -> StudyQuery | None:
    """The StudyQuery the options give (None: every study); a usage error for bad dates."""
    from migrator.sources.windows import StudyQuery, parse_date

    if not any(o.get(k) for k in ("date_from", "date_to", "modality", "find_limit")):
        return None
    try:
        return StudyQuery(
            date_from=parse_date(o["date_from"], "--from") if o.get("date_from") else None,
            date_to=parse_date(o["date_to"], "--to") if o.get("date_to") else None,
            modality=o.get("modality") or None,
            find_limit=o.get("find_limit"),
        )
    except ConfigError as exc:
        fail_config(str(exc))
        raise
