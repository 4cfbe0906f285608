"""Options and helpers shared by the commands: env vars, durations, AE titles, logging."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from migrator import logfmt
from migrator.errors import ConfigError
from migrator.exitcodes import ExitStatus
from migrator.units import parse_duration
from migrator.validation import ae_title

if TYPE_CHECKING:
    from migrator.dul.tls import TlsSettings
    from migrator.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

#: Our default calling AE title (what the PACS sees as the sender) unless --calling-ae.
DEFAULT_CALLING_AE = "MIGRATOR"
#: The end of every --redis-url help (the process title masks it, but not at once, nor in
#: the shell's history: migrator.proctitle).
REDIS_URL_SECRET_HINT = (
    " With a password, set MIGRATOR_REDIS_URL instead: a command line is visible to "
    "every user of the machine (ps) and kept in the shell's history."
)


def opt(*names: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    """A click option that can also come from ``MIGRATOR_<env>``."""
    return click.option(*names, envvar=f"MIGRATOR_{env}", show_envvar=True, **kwargs)


class Duration(click.ParamType[float]):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float | int):
            return float(value)
        try:
            return parse_duration(str(value))
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


class AETitle(click.ParamType[str]):
    name = "AE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return ae_title(str(value), f"{param.name if param else 'AE'} title")
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


class Concurrency(click.ParamType[int]):
    """``-j``: 1 to 64 associations, or ``auto`` (0: adapted as answers come)."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return 0
        if text.isdigit() and 1 <= int(text) <= 64:
            return int(text)
        self.fail(f"{value!r}: give a number of associations from 1 to 64, or auto", param, ctx)


DURATION = Duration()
AE = AETitle()
CONCURRENCY = Concurrency()


def peer_options(func: F) -> F:
    """--called-ae/--calling-ae and the three protocol timeouts."""
    for decorator in reversed(
        [
            opt(
                "--called-ae",
                env="CALLED_AE",
                type=AE,
                default="ANY-SCP",
                show_default=True,
                help="AE title of the destination (the PACS).",
            ),
            opt(
                "--calling-ae",
                env="CALLING_AE",
                type=AE,
                default=DEFAULT_CALLING_AE,
                show_default=True,
                help="Our AE title, as the PACS sees it.",
            ),
            opt(
                "--acse-timeout",
                env="ACSE_TIMEOUT",
                type=DURATION,
                default="30s",
                show_default=True,
                help="Wait for association accept/reject/release.",
            ),
            opt(
                "--dimse-timeout",
                env="DIMSE_TIMEOUT",
                type=DURATION,
                default="60s",
                show_default=True,
                help="Wait for each C-STORE/C-ECHO response.",
            ),
            opt(
                "--network-timeout",
                env="NETWORK_TIMEOUT",
                type=DURATION,
                default="60s",
                show_default=True,
                help="TCP connect and any stalled socket write.",
            ),
        ]
    ):
        func = decorator(func)
    return func


def setup_logging(verbose: int, quiet: bool = False, *, base: int = logging.WARNING) -> None:
    """Log to stderr at ``base`` (a receiver uses INFO: its log lines are its output);
    each -v goes one level further; pynetdicom stays at WARNING unless -vv or more."""
    level = base
    if quiet:
        level = logging.ERROR
    elif verbose:
        level = logging.INFO if base > logging.INFO and verbose == 1 else logging.DEBUG
    logfmt.configure(level)
    # pynetdicom logs a line per message at INFO: noise at our volume (STYLE.md).
    pynetdicom_level = {0: logging.WARNING, 1: logging.WARNING, 2: logging.INFO}
    logging.getLogger("pynetdicom").setLevel(pynetdicom_level.get(verbose, logging.DEBUG))


def fail_config(message: str) -> NoReturn:
    click.echo(f"migrator: error: {message}", err=True)
    raise SystemExit(int(ExitStatus.BAD_CONFIG))


def exit_status_of(exc: BaseException) -> ExitStatus:
    """The README's exit code for an error that ends a command: 2 for what the user gave
    (options, a source that does not exist or cannot be listed, credentials), 4 for a
    rejected association, 3 for what cannot be reached, 1 otherwise."""
    from migrator.errors import AssociationRejected, SourceError, TransientError

    if isinstance(exc, ConfigError | SourceError):
        return ExitStatus.BAD_CONFIG
    if isinstance(exc, AssociationRejected):
        return ExitStatus.ASSOCIATION_REJECTED
    if isinstance(exc, TransientError):  # ConnectError and every outage
        return ExitStatus.CANNOT_CONNECT
    return ExitStatus.PARTIAL_FAILURE


def fail(exc: BaseException) -> NoReturn:
    """End the command on ``exc``: one line, the exit code of :func:`exit_status_of`."""
    click.echo(f"migrator: error: {exc}", err=True)
    raise SystemExit(int(exit_status_of(exc))) from None


def send_options(func: F) -> F:
    """Destination, protocol, rate-limit, syntax and retry options shared by store and run."""
    for decorator in reversed(
        [
            opt(
                "--max-pdu",
                env="MAX_PDU",
                type=click.IntRange(4096, 2**32 - 1),
                default=16384,
                show_default=True,
                help="Largest PDU we accept (the PACS's own limit sizes what we send).",
            ),
            opt(
                "--rate-limit",
                env="RATE_LIMIT",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help="At most this many files per second (all associations together).",
            ),
            opt(
                "--rate-limit-bytes",
                env="RATE_LIMIT_BYTES",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help="At most this many MB (10^6 bytes) per second.",
            ),
            opt(
                "--burst",
                env="BURST",
                type=click.IntRange(1),
                default=10,
                show_default=True,
                help="Files that may go at once above --rate-limit after an idle period.",
            ),
            opt(
                "--throttle-delay",
                env="THROTTLE_DELAY",
                type=click.FloatRange(min=0),
                default=0,
                show_default=True,
                help="Pause in milliseconds after each file, per association.",
            ),
            opt(
                "--transfer-syntax",
                env="TRANSFER_SYNTAX",
                default=None,
                help="Force one transfer syntax (UID, keyword or alias: explicit, implicit, "
                "big-endian, j2k-lossless, ...); files are re-encoded to it when needed.",
            ),
            opt(
                "--allow-lossy-decompression",
                env="ALLOW_LOSSY_DECOMPRESSION",
                is_flag=True,
                help="When the PACS refuses a lossy-compressed file's syntax, send it "
                "decompressed (otherwise such files fail).",
            ),
            opt(
                "--retries",
                env="RETRIES",
                type=click.IntRange(0, 100),
                default=3,
                show_default=True,
                help="Re-sends of a file after a transient status (0xA7xx) or a lost association.",
            ),
            opt(
                "--s3-endpoint",
                env="S3_ENDPOINT",
                default=None,
                help="S3-compatible endpoint URL (credentials: the standard AWS chain or env).",
            ),
            opt("--s3-region", env="S3_REGION", default=None, help="S3 region."),
            opt(
                "--dicomweb",
                env="DICOMWEB",
                metavar="URL",
                default=None,
                help="Send by DICOMweb STOW-RS to this root URL instead of C-STORE, e.g. "
                "--dicomweb https://pacs.example.org/dicom-web (--host, --port and the AE "
                "titles are then not used).",
            ),
            opt(
                "--dicomweb-token-file",
                env="DICOMWEB_TOKEN_FILE",
                type=click.Path(dir_okay=False),
                metavar="FILE",
                default=None,
                help="File holding a bearer token for --dicomweb, read at each new "
                "connection (a token refreshed in place is used). Only the path is stored.",
            ),
            opt(
                "--dicomweb-basic-auth-file",
                env="DICOMWEB_BASIC_AUTH_FILE",
                type=click.Path(dir_okay=False),
                metavar="FILE",
                default=None,
                help="File holding user:password (HTTP basic auth) for --dicomweb.",
            ),
            opt(
                "--coerce",
                env="COERCE",
                type=click.Path(dir_okay=False),
                metavar="RULES.yaml",
                default=None,
                help="Change elements on the way (set, replace, prefix, map through a CSV "
                "table...), e.g. --coerce new-ids.yaml; checked before anything is sent. "
                "See docs/coercion.md.",
            ),
            opt(
                "--on-conflict",
                env="ON_CONFLICT",
                type=click.Choice(["fail", "first-good", "skip"]),
                default="fail",
                show_default=True,
                help="Files with the SOP Instance UID of another but other content: fail "
                "them, skip them once a copy is stored (first-good: copies are tried in "
                "order until one stores), or skip (only the first copy is ever sent).",
            ),
            opt(
                "--precheck",
                env="PRECHECK",
                is_flag=True,
                help="Before sending, ask the destination (C-FIND at IMAGE level, QIDO-RS "
                "with --dicomweb; batched) which files' SOP Instance UIDs it already holds: "
                "one held under another PatientID or StudyInstanceUID (after --coerce) is a "
                "conflict, failed (skipped with --on-conflict first-good/skip) instead of "
                "sent; an identical identity is sent as usual. E.g. --coerce ids.yaml "
                "--precheck. The PACS must allow our AE C-FIND.",
            ),
            opt(
                "--stow-batch-files",
                env="STOW_BATCH_FILES",
                type=click.IntRange(1, 10000),
                default=16,
                show_default=True,
                help="Instances per STOW-RS request at most.",
            ),
            opt(
                "--stow-batch-mb",
                env="STOW_BATCH_MB",
                type=click.FloatRange(min=0, min_open=True),
                default=16,
                show_default=True,
                help="MB (10^6 bytes) per STOW-RS request at most; a larger file goes alone.",
            ),
        ]
    ):
        func = decorator(func)
    func = peer_options(func)
    func = opt(
        "--port",
        env="PORT",
        type=click.IntRange(1, 65535),
        default=11112,
        show_default=True,
        help="Destination DICOM port.",
    )(func)
    func = opt(
        "--host",
        env="HOST",
        default=None,
        help="Destination host name or address (required unless --dicomweb).",
    )(func)
    return func


def _tls_decorators(env_prefix: str, helps: dict[str, str]) -> Callable[[F], F]:
    def apply(func: F) -> F:
        pem = click.Path(dir_okay=False)  # not checked here: `run` names files on the workers
        for decorator in reversed(
            [
                opt("--tls", env=f"{env_prefix}TLS", is_flag=True, help=helps["tls"]),
                opt(
                    "--tls-ca",
                    env=f"{env_prefix}TLS_CA",
                    type=pem,
                    metavar="FILE",
                    default=None,
                    help=helps["ca"],
                ),
                opt(
                    "--tls-cert",
                    env=f"{env_prefix}TLS_CERT",
                    type=pem,
                    metavar="FILE",
                    default=None,
                    help=helps["cert"],
                ),
                opt(
                    "--tls-key",
                    env=f"{env_prefix}TLS_KEY",
                    type=pem,
                    metavar="FILE",
                    default=None,
                    help=helps["key"],
                ),
            ]
        ):
            func = decorator(func)
        return func

    return apply


#: --tls, --tls-ca, --tls-cert, --tls-key for the senders (store, run, plan).
tls_options = _tls_decorators(
    "",
    {
        "tls": "DICOM TLS to the destination: its certificate must be valid for --host and "
        "signed by --tls-ca (or a system CA).",
        "ca": "PEM file of the CA(s) that signed the PACS's certificate (with --tls).",
        "cert": "PEM client certificate, for a PACS that requires one (with --tls).",
        "key": "PEM private key of --tls-cert, unencrypted, if not in the same file. Only "
        "the path is stored in a job, never the key.",
    },
)

#: The receiver's TLS options (scp), under MIGRATOR_SCP_TLS*.
receiver_tls_options = _tls_decorators(
    "SCP_",
    {
        "tls": "Accept DICOM TLS only (no plain associations), with --tls-cert as this "
        "receiver's certificate.",
        "ca": "PEM file of the CA(s) whose client certificates are accepted: every sender "
        "must then present one (mutual TLS).",
        "cert": "PEM certificate of this receiver (with --tls).",
        "key": "PEM private key of --tls-cert, unencrypted, if not in the same file.",
    },
)


def tls_settings(
    tls: bool, ca: str | None, cert: str | None, key: str | None, *, receiver: bool = False
) -> TlsSettings | None:
    """The TlsSettings of the --tls* options (None without --tls); bad combinations exit 2."""
    from migrator.dul.tls import TlsSettings

    if not tls:
        given = [
            name for name, v in (("--tls-ca", ca), ("--tls-cert", cert), ("--tls-key", key)) if v
        ]
        if given:
            # Never fall back to plain TCP when TLS was meant.
            fail_config(f"{', '.join(given)} given without --tls: add --tls to use DICOM TLS")
        return None
    if key and not cert:
        fail_config("--tls-key needs --tls-cert (the certificate of that key)")
    if receiver and not cert:
        fail_config("--tls needs --tls-cert and --tls-key: the receiver's certificate and key")
    return TlsSettings(ca=ca, cert=cert, key=key)


def report_option(func: F) -> F:
    """--report for `store`, `run` and `retry`: repeatable, the format follows each name."""
    return opt(
        "--report",
        env="REPORT",
        multiple=True,
        type=click.Path(dir_okay=False),
        help="Write a report to this path: JSON (totals and one entry per file) unless the "
        "name ends in .html (charts), .csv (files not stored) or .txt (summary). "
        "Repeatable: --report run.html --report run.json writes both.",
    )(func)


def settings_from_options(o: dict[str, Any], *, check_tls: bool = True, **extra: Any) -> Settings:
    """The Settings of the shared sender options (``send_options``, ``tls_options``) plus
    ``extra`` fields (``concurrency``, ``max_associations``, ``timeout``). Anything wrong
    (a number out of range, a syntax that cannot be forced, unreadable TLS files when
    ``check_tls``) ends the command with exit 2 before anything is sent."""
    import os

    from migrator.settings import Settings
    from migrator.syntaxes import resolve

    tls = tls_settings(o["tls"], o["tls_ca"], o["tls_cert"], o["tls_key"])
    dicomweb = o["dicomweb"]
    host = o["host"]
    if not host and not dicomweb:
        fail_config("give the destination: --host (DIMSE) or --dicomweb URL (STOW-RS)")
    if dicomweb and not host:
        from urllib.parse import urlsplit

        host = urlsplit(dicomweb).hostname or dicomweb
    auth_files = (o["dicomweb_token_file"], o["dicomweb_basic_auth_file"])
    if any(auth_files) and not dicomweb:
        fail_config("--dicomweb-token-file / --dicomweb-basic-auth-file need --dicomweb")
    if all(auth_files):
        fail_config("give --dicomweb-token-file or --dicomweb-basic-auth-file, not both")
    try:
        settings = Settings(
            host=host,
            port=o["port"],
            called_ae=o["called_ae"],
            calling_ae=o["calling_ae"],
            acse_timeout=o["acse_timeout"],
            dimse_timeout=o["dimse_timeout"],
            network_timeout=o["network_timeout"],
            max_pdu=o["max_pdu"],
            transfer_syntax=resolve(o["transfer_syntax"]) if o["transfer_syntax"] else None,
            allow_lossy=o["allow_lossy_decompression"],
            retries=o["retries"],
            rate_limit=o["rate_limit"],
            rate_limit_bytes=o["rate_limit_bytes"] * 1e6 if o["rate_limit_bytes"] else None,
            burst=o["burst"],
            throttle_delay=o["throttle_delay"] / 1000.0,
            s3_endpoint=o["s3_endpoint"],
            s3_region=o["s3_region"],
            # Paths made absolute: a job's workers read them (same layout on every host).
            tls=tls is not None,
            tls_ca=os.path.abspath(o["tls_ca"]) if o["tls_ca"] else None,
            tls_cert=os.path.abspath(o["tls_cert"]) if o["tls_cert"] else None,
            tls_key=os.path.abspath(o["tls_key"]) if o["tls_key"] else None,
            dicomweb=dicomweb.rstrip("/") if dicomweb else None,
            dicomweb_token_file=_abspath(o["dicomweb_token_file"]),
            dicomweb_basic_auth_file=_abspath(o["dicomweb_basic_auth_file"]),
            stow_batch_files=o["stow_batch_files"],
            stow_batch_bytes=int(o["stow_batch_mb"] * 1e6),
            **_coerce_fields(o["coerce"]),
            on_conflict=o["on_conflict"],
            precheck=o["precheck"],
            **extra,
        )
        if settings.precheck:
            from migrator.transfer.precheck import check_rules

            check_rules(settings)
        settings.limits  # noqa: B018 - validates the numbers now
        if check_tls and settings.tls_settings is not None:
            settings.tls_settings.client_context()  # unreadable or mismatched files
        if check_tls and dicomweb:
            from migrator.dicomweb.auth import authorization

            authorization(*auth_files)  # unreadable or empty files: exit 2 now
    except ConfigError as exc:
        fail_config(str(exc))
        raise
    return settings


def _abspath(path: str | None) -> str | None:
    """Absolute: a job's workers read the file (same layout on every host)."""
    import os

    return os.path.abspath(path) if path else None


def _coerce_fields(path: str | None) -> dict[str, Any]:
    """``--coerce``: the rules checked now (a bad file: exit 2 with its line), and carried to
    every sender by path and digest."""
    if not path:
        return {}
    from migrator.coerce.rules import load_rules

    rules = load_rules(path)  # RulesError is a ConfigError
    return {"coerce": rules.path, "coerce_digest": rules.digest}
