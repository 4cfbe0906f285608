#!/usr/bin/env python3
"""pynetdicom as a C-STORE sender, tuned as the peer measurements describe, for store_bench.py.

    peers_pynetdicom.py HOST PORT DIR [--aec AET] [--pdu N] [--processes N]

Sends every file under DIR (recursively, sorted) over one association per process. The
tuning, each one a documented pynetdicom knob or a patch of its internals (pynetdicom 3.0.x):

- ``_config.STORE_SEND_CHUNKED_DATASET = True``: ``send_c_store(path)`` streams the file's
  dataset in PDU-sized chunks instead of decoding and re-encoding it.
- ``TCP_NODELAY`` on the association's socket (``AssociationSocket._create_socket`` wrapped):
  pynetdicom has no switch for it, and without it every C-STORE waits 40–90 ms on loopback
  (Nagle's algorithm against delayed ACK).
- The DUL reactor's idle sleep (``_run_loop_delay``, 1 ms) set to 0.
- The association's reactor kept parked while sending. ``send_c_store()`` parks it, sends,
  takes the response off the DIMSE queue and unparks it; the reactor thread, woken by the
  unpark, can then take the *next* C-STORE-RSP off the queue before the next
  ``send_c_store()`` has parked it again ("Received unexpected C-STORE service message"),
  and that send waits for the DIMSE timeout and aborts the association (seen: 377 of 1000
  files lost). A pure SCU needs no reactor between its own requests, so it stays parked from
  the first send to the release.

Every status is checked: Success and Warning count as stored; a Failure, an empty response
(DIMSE timeout, abort, closed connection) or an exception counts as failed, and the files left
after a lost association count as failed too (no re-send: the bench wants the failure seen).
``--processes N`` forks N senders over contiguous parts of the sorted file list, after the
imports (so the children do not pay for them again).

Last line: ``pynetdicom-tuned: stored S of N files, failed F``. Exit status 0 only if every file
was stored, 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config, transport
from pynetdicom.association import Association
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

_config.STORE_SEND_CHUNKED_DATASET = True
_original_create_socket = transport.AssociationSocket._create_socket


def _create_socket_nodelay(self: transport.AssociationSocket, address: Any) -> socket.socket:
    sock = _original_create_socket(self, address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


transport.AssociationSocket._create_socket = _create_socket_nodelay  # type: ignore[method-assign]

_MAX_CONTEXTS = 128  # PS3.8 §9.3.2.2: presentation context IDs are odd numbers 1..255
_DIMSE_TIMEOUT_S = 60


class _Parked:
    """Stands in for ``Association._reactor_checkpoint`` while sending: never lets it run."""

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass

    def is_set(self) -> bool:
        return False


def _contexts(files: Sequence[Path]) -> tuple[dict[str, set[str]], list[Path]]:
    """SOP Class UID -> transfer syntaxes, from each file's meta information (the chunked send
    needs a context with exactly the file's transfer syntax: nothing is converted), and the
    files without readable meta information (not sent: they count as failed)."""
    found: dict[str, set[str]] = {}
    unreadable: list[Path] = []
    for path in files:
        try:
            meta = read_file_meta_info(path)
            sop_class, ts = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
        except (OSError, InvalidDicomError, AttributeError) as exc:
            print(f"{path}: not sent: {exc}", file=sys.stderr)
            unreadable.append(path)
            continue
        found.setdefault(sop_class, set()).add(ts)
    return found, unreadable


def _park(assoc: Association) -> Any:
    real = assoc._reactor_checkpoint
    real.clear()
    while not assoc._is_paused:  # as send_c_store() waits for it
        time.sleep(0.0001)
    assoc._reactor_checkpoint = _Parked()  # type: ignore[assignment]
    return real


def send(host: str, port: int, aec: str, pdu: int, files: Sequence[Path]) -> tuple[int, int]:
    """(stored, failed) for ``files`` over one association."""
    total = len(files)
    if not files:
        return 0, 0
    ae = AE(ae_title="PYNETDICOM")
    ae.maximum_pdu_size = pdu
    ae.dimse_timeout = _DIMSE_TIMEOUT_S
    contexts, unreadable = _contexts(files)
    if sum(len(ts) for ts in contexts.values()) > _MAX_CONTEXTS:
        print(f"more than {_MAX_CONTEXTS} presentation contexts needed", file=sys.stderr)
        return 0, total
    if unreadable:
        skip = set(unreadable)
        files = [f for f in files if f not in skip]
        if not files:
            return 0, total
    for sop_class, syntaxes in contexts.items():
        for ts in sorted(syntaxes):  # one context per syntax: each is accepted on its own
            ae.add_requested_context(sop_class, ts)
    assoc = ae.associate(host, port, ae_title=aec)
    if not assoc.is_established:
        print("association not established", file=sys.stderr)
        return 0, total
    assoc.dul._run_loop_delay = 0
    stored, failed = 0, len(unreadable)
    real = _park(assoc)
    try:
        for i, path in enumerate(files):
            if not assoc.is_established:
                print(f"association lost after {i} files", file=sys.stderr)
                failed += len(files) - i
                break
            try:
                status = assoc.send_c_store(path, msg_id=i % 65535 + 1)
            except (OSError, RuntimeError, ValueError, AttributeError) as exc:
                print(f"{path}: {exc}", file=sys.stderr)
                failed += 1
                continue
            code = status.get("Status") if status else None
            if code is not None and code_to_category(code) in (STATUS_SUCCESS, STATUS_WARNING):
                stored += 1
            else:
                failed += 1
                shown = "no response" if code is None else f"0x{code:04X}"
                print(f"{path}: status {shown}", file=sys.stderr)
    finally:
        # Unpark: the reactor thread waits on the real event; release() parks it again itself,
        # and kill() (after an abort) sets it so the thread can exit.
        assoc._reactor_checkpoint = real
        if assoc.is_established:
            assoc.release()
        else:
            real.set()
    return stored, failed


def _send_in_processes(args: argparse.Namespace, files: list[Path]) -> tuple[int, int]:
    n = min(args.processes, len(files)) or 1
    bounds = [len(files) * k // n for k in range(n + 1)]
    sys.stdout.flush()
    sys.stderr.flush()
    children: list[tuple[int, int]] = []  # (pid, read end of its result pipe)
    for k in range(n):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: send its part, report "stored failed", exit without cleanup
            os.close(r)
            code = 1
            try:
                stored, failed = send(
                    args.host, args.port, args.aec, args.pdu, files[bounds[k] : bounds[k + 1]]
                )
                os.write(w, f"{stored} {failed}".encode())
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(w)
        children.append((pid, r))
    stored = failed = 0
    for k, (pid, r) in enumerate(children):
        with os.fdopen(r, "rb") as pipe:
            report = pipe.read().split()
        _, status = os.waitpid(pid, 0)
        part = bounds[k + 1] - bounds[k]
        if os.waitstatus_to_exitcode(status) != 0 or len(report) != 2:
            print(f"process {k + 1} of {n} died: its {part} files count as failed", file=sys.stderr)
            failed += part
            continue
        stored += int(report[0])
        failed += int(report[1])
    return stored, failed


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("dir", type=Path)
    p.add_argument("--aec", default="ANY-SCP", help="called AE title")
    p.add_argument("--pdu", type=int, default=131072, help="maximum PDU we accept")
    p.add_argument("--processes", type=int, default=1, help="sending processes (default 1)")
    args = p.parse_args(argv)
    if args.processes < 1:
        p.error("--processes must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    files = sorted(f for f in args.dir.rglob("*") if f.is_file())
    if args.processes == 1:
        stored, failed = send(args.host, args.port, args.aec, args.pdu, files)
    else:
        stored, failed = _send_in_processes(args, files)
    print(f"pynetdicom-tuned: stored {stored} of {len(files)} files, failed {failed}", flush=True)
    return 0 if stored == len(files) and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
