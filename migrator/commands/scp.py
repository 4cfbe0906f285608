"""``migrator scp``: receive DICOM instances (Storage SCP), optionally misbehaving on purpose."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from migrator.commands.common import (
    AE,
    DURATION,
    opt,
    receiver_tls_options,
    setup_logging,
    tls_settings,
)
from migrator.errors import ConfigError
from migrator.exitcodes import ExitStatus
from migrator.scp.faults import FaultPlan
from migrator.scp.network import ListenError
from migrator.scp.processes import Receivers
from migrator.scp.server import ScpConfig, StorageSCP
from migrator.scp.storage import check_output_dir
from migrator.validation import is_valid_uid

log = logging.getLogger("migrator.scp")


class HexStatus(click.ParamType[int]):
    """A DIMSE status as hex: ``A700``, ``0xA700`` or ``0xa700``."""

    name = "HEX"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().removeprefix("0x")
        try:
            status = int(text, 16)
        except ValueError:
            self.fail(f"{value!r} is not a hex status such as A700 or 0xC000", param, ctx)
        if not 0 <= status <= 0xFFFF:
            self.fail(f"{value!r} is not a 16-bit status (0000 to FFFF)", param, ctx)
        return status


def resolve_sop_class(text: str) -> str:
    """A SOP Class UID, or a pynetdicom keyword such as ``CTImageStorage``, -> UID."""
    value = text.strip()
    if is_valid_uid(value):
        return value
    from pynetdicom import sop_class

    uid = getattr(sop_class, value, None)
    if isinstance(uid, str) and is_valid_uid(uid):
        return uid
    raise ConfigError(
        f"--sop-class {text!r} is neither a UID nor a SOP class keyword (e.g. CTImageStorage)"
    )


@click.command(
    "scp",
    epilog=(
        "Exit codes: 0 stopped by SIGTERM/Ctrl-C (after printing the summary); 2 bad "
        "arguments, or the output directory cannot be created or written; 3 cannot "
        "listen (port in use, permission denied, address not on this host)."
    ),
)
@click.argument(
    "port", type=click.IntRange(0, 65535), default=11112, required=False, envvar="MIGRATOR_SCP_PORT"
)
@opt(
    "--aet",
    env="SCP_AET",
    type=AE,
    default="MIGRATOR-SCP",
    show_default=True,
    help="Our AE title. The called AE title of incoming associations is not checked.",
)
@opt(
    "--output-dir",
    "-o",
    env="SCP_OUTPUT_DIR",
    default="./dicom-received",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where received files go (created if missing).",
)
@opt(
    "--organize/--no-organize",
    env="SCP_ORGANIZE",
    default=True,
    show_default=True,
    help="OUTPUT/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm, or flat OUTPUT/<SOPInstanceUID>.dcm.",
)
@opt(
    "--max-pdu",
    env="SCP_MAX_PDU",
    type=click.IntRange(0, 0xFFFFFFFF),
    default=16384,
    show_default=True,
    help="Maximum PDU length we receive (0 = unlimited).",
)
@opt(
    "--max-conns",
    env="SCP_MAX_CONNS",
    type=click.IntRange(1, 10000),
    default=10,
    show_default=True,
    help="Simultaneous associations; one more is rejected with A-ASSOCIATE-RJ "
    "(2 transient, 3 presentation layer, 2 local limit exceeded). Connections that have "
    "not asked for an association yet take no slot (see --handshake-timeout).",
)
@opt(
    "--max-conns-per-address",
    env="SCP_MAX_CONNS_PER_ADDRESS",
    type=click.IntRange(1, 10000),
    default=None,
    metavar="N",
    help="Associations one IP address may hold; one more is rejected as --max-conns "
    "does. Default: --max-conns minus a fifth of it (8 of 10; up to 4: all), so one "
    "sender cannot lock the others out.",
)
@opt(
    "--handshake-timeout",
    env="SCP_HANDSHAKE_TIMEOUT",
    type=DURATION,
    default="5s",
    show_default=True,
    help="A connection must send its whole A-ASSOCIATE-RQ (TLS handshake included) "
    "within this time of connecting, or it is closed. At most max(16, 2 x --max-conns) "
    "such connections per address wait at a time; more are closed at once.",
)
@opt(
    "--idle-timeout",
    env="SCP_IDLE_TIMEOUT",
    type=DURATION,
    default="30s",
    show_default=True,
    help="An association that sends nothing for this long is aborted (A-ABORT). Time "
    "spent storing an instance does not count.",
)
@opt(
    "--accept-echo/--no-accept-echo",
    env="SCP_ACCEPT_ECHO",
    default=True,
    show_default=True,
    help="Accept the Verification SOP class (C-ECHO). Off: its context is rejected.",
)
@opt(
    "--sop-class",
    "sop_classes",
    env="SCP_SOP_CLASS",
    multiple=True,
    metavar="UID",
    help="Accept only this storage SOP class (UID or keyword such as CTImageStorage); "
    "repeatable. Default: every storage SOP class. Others get their presentation "
    "context rejected (abstract syntax not supported).",
)
@opt(
    "--bind",
    env="SCP_BIND",
    default="0.0.0.0",
    show_default=True,
    help="Address to listen on (0.0.0.0 = all IPv4 interfaces).",
)
@opt(
    "--fail-status",
    env="SCP_FAIL_STATUS",
    type=HexStatus(),
    default=None,
    help="[testing] Answer this status (hex, e.g. A700) instead of storing; the instance "
    "is never written, even for 0000.",
)
@opt(
    "--fail-first",
    env="SCP_FAIL_FIRST",
    type=click.IntRange(0),
    default=None,
    metavar="K",
    help="[testing] Fault budget shared by all associations: only the first K selected "
    "C-STOREs fail, later ones are stored. With --abort-after: only the first K "
    "associations abort.",
)
@opt(
    "--fail-every",
    env="SCP_FAIL_EVERY",
    type=click.IntRange(1),
    default=None,
    metavar="N",
    help="[testing] Select C-STORE number N, 2N, 3N... (counted across all associations) "
    "for --fail-status.",
)
@opt(
    "--abort-after",
    env="SCP_ABORT_AFTER",
    type=click.IntRange(0),
    default=None,
    metavar="N",
    help="[testing] Abort each association (A-ABORT) when its store N+1 arrives; that "
    "instance is not stored and gets no response. Not combinable with --fail-status or "
    "--fail-every.",
)
@opt(
    "--response-delay",
    env="SCP_RESPONSE_DELAY",
    type=click.FloatRange(0),
    default=0,
    metavar="MS",
    help="[testing] Sleep MS milliseconds before answering every C-STORE (after storing "
    "it or deciding its fault).",
)
@opt(
    "--refuse",
    env="SCP_REFUSE",
    is_flag=True,
    default=False,
    help="[testing] Reject every association: A-ASSOCIATE-RJ 1 permanent, 1 service user, "
    "1 no reason given (like storescp --refuse).",
)
@receiver_tls_options
@opt(
    "--stats-interval",
    env="SCP_STATS_INTERVAL",
    type=click.FloatRange(min=0.05),
    default=30.0,
    hidden=True,
)
@opt(
    "--io-timeout",
    env="SCP_IO_TIMEOUT",
    type=click.FloatRange(min=0.05),
    default=60.0,
    hidden=True,
    help="Seconds a peer may stall inside a PDU or a TLS handshake before it is dropped.",
)
@opt(
    "--processes",
    env="SCP_PROCESSES",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Receiving processes sharing the port. One receives on about one core; with "
    "many senders at once, use the number of cores (like storescp --fork, with a fixed "
    "pool). --max-conns and the other limits hold for the receiver as a whole; the "
    "C-STORE numbers of the -v lines count per process. --fail-status needs 1.",
)
@opt(
    "-v",
    "--verbose",
    env="SCP_VERBOSE",
    count=True,
    help="A line per stored file, each association's end, and the upper layer's details.",
)
def scp_command(
    port: int,
    aet: str,
    output_dir: Path,
    organize: bool,
    max_pdu: int,
    max_conns: int,
    accept_echo: bool,
    sop_classes: tuple[str, ...],
    bind: str,
    fail_status: int | None,
    fail_first: int | None,
    fail_every: int | None,
    abort_after: int | None,
    response_delay: float,
    refuse: bool,
    tls: bool,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    max_conns_per_address: int | None,
    handshake_timeout: float,
    idle_timeout: float,
    stats_interval: float,
    io_timeout: float,
    processes: int,
    verbose: int,
) -> None:
    """Receive DICOM instances over the network and write them to disk (Storage SCP).

    Files are written as received (same transfer syntax, no re-encoding) with a File
    Meta header, atomically (temporary .part file then rename). UIDs are not trusted:
    an instance whose Study/Series/SOP Instance UID is not a valid UID (e.g. contains
    "/" or "..") is refused with status 0xC000 and nothing is written; a failed write
    answers 0xA700. Logs go to stderr: a banner, a line per association and C-ECHO and
    per C-STORE that failed (AE titles, SOP class; never patient data), with -v a line
    per stored file too (its path, size, syntax, time), statistics every 30 s, and a
    summary on SIGTERM or Ctrl-C (associations still open then are aborted). Once listening it
    prints, for scripts: "migrator scp: listening on HOST:PORT as AE TITLE (pid N)".

    Peers that hold slots without sending are cut off: a connection has --handshake-timeout
    (5 s) to ask for an association and takes no --max-conns slot until it does, one
    address holds at most --max-conns-per-address of them, an association silent for
    --idle-timeout (30 s) is aborted, and an unknown PDU type is answered with A-ABORT at
    once. A broken peer is one warning line in the log (no traceback).

    With --tls it accepts DICOM TLS only (TLS 1.2+), with --tls-cert/--tls-key as its
    certificate; with --tls-ca too, every sender must present a client certificate signed
    by that CA (a refused handshake is logged with the reason).

    PORT defaults to 11112 (env MIGRATOR_SCP_PORT); 0 lets the kernel choose a free
    port (read it from that line). A re-sent instance replaces the earlier file (the
    log says so). Each dataset is written as it arrives to a hidden .part file in the
    output directory, renamed into place once complete and checked: nothing is spooled
    elsewhere, and no instance is ever held whole in memory.

    \b
    Examples:
      migrator scp                                  # port 11112, ./dicom-received
      migrator scp 4242 --aet PACS -o /data/in --no-organize
      migrator scp 0 --bind 127.0.0.1 --sop-class CTImageStorage
      MIGRATOR_SCP_AET=TESTPACS migrator scp 11113
      migrator scp 2762 --tls --tls-cert scp.pem --tls-key scp.key --tls-ca clients-ca.pem
      migrator scp 104 --max-conns 40 --max-conns-per-address 8 --idle-timeout 2m
      MIGRATOR_SCP_HANDSHAKE_TIMEOUT=2s MIGRATOR_SCP_IDLE_TIMEOUT=10s migrator scp

    \b
    Testing features (fault injection; the misbehaving PACS for sender tests):
      C-STOREs are numbered 1, 2, 3... across all associations.
      --fail-status A700                    every C-STORE answered 0xA700, none stored
      --fail-status A700 --fail-first 2     C-STOREs 1 and 2 get 0xA700, the rest stored
      --fail-status C000 --fail-every 3     C-STOREs 3, 6, 9... get 0xC000
      --fail-status A700 --fail-every 2 --fail-first 1   only C-STORE 2 fails
      --abort-after 3                       every association aborted at its 4th store
      --abort-after 3 --fail-first 1        only the first association to reach its 4th
                                            store aborts; a sender that reconnects succeeds
      --response-delay 2000                 answer each C-STORE 2 s late (after storing)
      --refuse                              reject every association (1, 1, 1)
    """
    setup_logging(verbose, base=logging.INFO)
    plan = FaultPlan(
        fail_status=fail_status,
        fail_first=fail_first,
        fail_every=fail_every,
        abort_after=abort_after,
        response_delay=response_delay / 1000.0,
        refuse=refuse,
    )
    tls_config = tls_settings(tls, tls_ca, tls_cert, tls_key, receiver=True)
    try:
        for name, seconds in (
            ("--handshake-timeout", handshake_timeout),
            ("--idle-timeout", idle_timeout),
        ):
            if seconds <= 0:
                raise ConfigError(f"{name} must be more than 0 seconds")
        plan.validate()
        uids = tuple(resolve_sop_class(s) for s in sop_classes)
        out = check_output_dir(output_dir)
    except ConfigError as exc:
        _fail(str(exc), ExitStatus.BAD_CONFIG)
    config = ScpConfig(
        output_dir=out,
        port=port,
        bind=bind,
        ae_title=aet,
        max_pdu=max_pdu,
        max_conns=max_conns,
        organize=organize,
        accept_echo=accept_echo,
        sop_classes=uids,
        faults=plan,
        stats_interval=stats_interval,
        tls=tls_config,
        io_timeout=io_timeout,
        handshake_timeout=handshake_timeout,
        idle_timeout=idle_timeout,
        max_conns_per_address=max_conns_per_address,
    )
    scp: StorageSCP | Receivers
    try:
        # Both load the TLS certificate and key now.
        scp = StorageSCP(config) if processes == 1 else Receivers(config, processes)
    except ConfigError as exc:
        _fail(str(exc), ExitStatus.BAD_CONFIG)
    try:
        host, bound_port = scp.start()
    except ListenError as exc:
        _fail(str(exc), ExitStatus.CANNOT_CONNECT)
    stop = threading.Event()
    received: list[str] = []

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    scp.log_banner(host, bound_port)
    # The machine-readable ready line (tests/peers/migrator_scp.py parses it): printed
    # only once the socket listens, with our PID so a caller can prove who answers.
    click.echo(
        f"migrator scp: listening on {host}:{bound_port} as AE {aet} (pid {os.getpid()})",
        err=True,
    )
    try:
        scp.serve_until(stop)
    finally:
        log.info("stopping (%s)", received[0] if received else "exiting")
        scp.stop()
        log.info("shutdown summary:")
        for line in scp.summary_lines():
            log.info("%s", line)
    if isinstance(scp, Receivers) and scp.failed:
        _fail(scp.failed, ExitStatus.PARTIAL_FAILURE)
    raise SystemExit(int(ExitStatus.OK))


def _fail(message: str, status: ExitStatus) -> NoReturn:
    click.echo(f"migrator scp: error: {message}", err=True)
    raise SystemExit(int(status))


if __name__ == "__main__":
    # `python -m migrator.commands.scp` runs just this command: the test helper uses it so
    # that a receiver starts even while another command's module is broken mid-edit.
    scp_command(prog_name="migrator scp")
