"""The DICOMweb destination: STOW-RS (PS3.18 10.5) behind the Destination seam.

A connection is one HTTP/1.1 keep-alive connection; the policy's lanes keep several busy
from one thread, as they do associations. Files are staged by ``start`` (up to
``stow_batch_files`` and ``stow_batch_bytes`` per request; a larger file goes alone) and go
out as one ``multipart/related`` body in ``flush``, streamed from the files. The answer names
each instance (``migrator.dicomweb.response``), and each file gets its own ``SendResult``,
classified by ``migrator.status`` like a C-STORE status, so one instance the server refuses
fails alone while the others of its request are stored.

HTTP statuses of the request as a whole: 429, 503 and the other 5xx leave every file of the
request to be re-sent (after ``Retry-After`` when given); 413 makes the destination send
one file per request from then on (the files of that request are re-sent, each alone);
other 4xx fail the files with the status. A connection lost while sending or before the
answer (a reset, an idle close) leaves the outcome unknown: ``AssociationLost``, and the
policy re-sends the files on a fresh connection; the ledger keeps each file's one outcome.

HTTP client: urllib3's ``HTTPConnection``. It writes a request and reads its answer in two
calls on a socket we can ``select`` on, which is what the lanes need (one thread, several
requests in flight); httpx's synchronous client sends and waits in one call. Measured on
this machine (Orthanc 1.10 with its DICOMweb plugin, 16 × 10 KB files per request, a
streamed body, keep-alive): the client's own CPU per request was 1.2-1.3 ms with urllib3 and
2.5 ms with httpx; the wall time (~120-190 ms a request) is Orthanc's in both. urllib3 is
also already installed with boto3.
"""

from __future__ import annotations

import email.utils
import http.client
import time
from collections.abc import Set
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection

from migrator import status as st
from migrator.dicomfile import DicomHeader
from migrator.dicomweb.auth import authorization
from migrator.dicomweb.https import connection
from migrator.dicomweb.multipart import Body, Part
from migrator.dicomweb.response import BadAnswer, InstanceAnswer, parse
from migrator.dicomweb.url import root_path
from migrator.errors import AssociationLost, ConfigError, ConnectError
from migrator.settings import Settings
from migrator.sources.base import Payload
from migrator.transfer.destination import Pair, SendResult

#: Failures of the HTTP exchange itself (nothing answered, or the answer cut short)
_HTTP_ERRORS = (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError)
#: Longest Retry-After honoured (a server asking for hours is asked again sooner)
MAX_RETRY_AFTER = 300.0


@dataclass(frozen=True, slots=True)
class _Pending:
    uid: str
    nbytes: int
    ts: str
    note: str


class StowDestination:
    """A DICOMweb service's root URL (``settings.dicomweb``)."""

    def __init__(self, settings: Settings) -> None:
        assert settings.dicomweb is not None
        self.settings = settings
        self.key = settings.destination
        self.name = settings.server
        parts = urlsplit(settings.dicomweb)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.path = root_path(settings.dicomweb) + "/studies"
        #: Files per request; 1 after the server answered 413 to a request of several
        self.max_files = settings.stow_batch_files

    def connect(self, needed: Pair, wanted: Set[Pair]) -> StowConnection:
        s = self.settings
        try:
            # Read at each connection: a token refreshed in its file is used from then on.
            auth = authorization(s.dicomweb_token_file, s.dicomweb_basic_auth_file)
        except ConfigError as exc:
            raise ConnectError(f"DICOMweb credentials on this sender: {exc}") from None
        try:
            http = connection(self.https, self.host, self.port, s.network_timeout, s.dicomweb_tls)
        except ConfigError as exc:
            raise ConnectError(f"DICOMweb https settings on this sender: {exc}") from None
        try:
            http.connect()
        except _HTTP_ERRORS as exc:
            http.close()
            raise ConnectError(f"cannot connect to {self.name}: {exc}", unreachable=True) from None
        return StowConnection(self, http, auth)


class StowConnection:
    """One HTTP connection; see ``migrator.transfer.destination.Connection``."""

    def __init__(self, dest: StowDestination, http: HTTPConnection, auth: str | None) -> None:
        self.dest = dest
        self.capacity = dest.settings.stow_batch_files
        self.requests = 0
        self._http = http
        self._auth = auth
        self._dead = False
        self._staged: list[tuple[Part, _Pending]] = []
        self._staged_bytes = 0
        #: The request on the wire: its files, when it went, by when it must be answered
        self._sent: list[_Pending] = []
        self._sent_at = 0.0
        self._deadline = 0.0
        self._answers: dict[str, SendResult] | None = None

    @property
    def alive(self) -> bool:
        return not self._dead

    def covers(self, pair: Pair) -> bool:
        return True  # no negotiation: the server answers per instance

    def room(self, size: int) -> bool:
        if not self._staged:
            return True  # the policy asks only while it stages (nothing of it on the wire)
        return (
            len(self._staged) < self.dest.max_files
            and self._staged_bytes + size <= self.dest.settings.stow_batch_bytes
        )

    def start(self, header: DicomHeader, payload: Payload) -> _Pending | SendResult:
        part = Part.of(header, payload)
        pending = _Pending(header.sop_instance_uid, part.size, header.transfer_syntax, header.note)
        self._staged.append((part, pending))
        self._staged_bytes += part.size
        return pending

    def flush(self) -> None:
        if not self._staged:
            return
        staged, self._staged, self._staged_bytes = self._staged, [], 0
        body = Body([part for part, _ in staged])
        headers = {
            "Content-Type": body.content_type,
            "Content-Length": str(len(body)),
            "Accept": "application/dicom+json",
        }
        if self._auth is not None:
            headers["Authorization"] = self._auth
        self.requests += 1
        self._sent = [pending for _, pending in staged]
        self._answers = None
        if not self._http.is_connected:
            # Closed by the server while idle (Orthanc: after 1 s): reopen before sending,
            # so a keep-alive timeout costs no file an attempt.
            self._http.close()
        self._sent_at = time.perf_counter()
        self._deadline = time.monotonic() + self.dest.settings.dimse_timeout
        try:
            self._http.request("POST", self.dest.path, body=body, headers=headers, chunked=False)
        except _HTTP_ERRORS as exc:
            self._lose(f"STOW-RS request not sent whole: {exc}")

    def fileno(self) -> int:
        sock = self._http.sock
        if sock is None:
            raise ValueError("not connected")
        return sock.fileno()

    def buffered(self) -> bool:
        return self._answers is not None

    def deadline(self, pending: object) -> float:
        return self._deadline

    def finish(self, pending: object) -> SendResult:
        assert isinstance(pending, _Pending)
        if self._answers is None:
            self._answers = self._read_answer()
        return self._answers[pending.uid]

    def release(self) -> None:
        self._dead = True
        self._http.close()

    def abort(self) -> None:
        self.release()

    # -- the answer ------------------------------------------------------------------

    def _lose(self, why: str) -> NoReturn:
        self.release()
        # by_peer False: a connection carries several files, so a reset blames none of them.
        raise AssociationLost(why)

    def _read_answer(self) -> dict[str, SendResult]:
        if time.monotonic() > self._deadline:
            self._lose(f"no STOW-RS answer in {self.dest.settings.dimse_timeout:g} s")
        try:
            response = self._http.getresponse()
            body = response.data
        except _HTTP_ERRORS as exc:
            self._lose(f"STOW-RS answer lost: {exc}")
        seconds = time.perf_counter() - self._sent_at
        if response.headers.get("Connection", "").lower() == "close":
            self._http.close()  # the next request opens a new one
        code = response.status
        results: dict[str, SendResult] = {}
        if code in (200, 202, 409):
            try:
                answers = parse(body)
            except BadAnswer as exc:
                answers = {}
                why = f"HTTP {code} with an answer that cannot be read ({exc})"
            else:
                why = (
                    f"not stored: the server's answer (HTTP {code}) names this instance "
                    "neither as stored nor as failed"
                )
            for p in self._sent:
                results[p.uid] = self._per_instance(p, answers.get(p.uid), why, seconds)
            return results
        reason = _http_reason(code, response.reason or "", body)
        outcome = st.Outcome.PERMANENT
        retry_after = 0.0
        if code == 413 and len(self._sent) > 1:
            # Too large: the files go one per request from now on (the limit is the server's).
            self.dest.max_files = 1
            outcome, reason = st.Outcome.TRANSIENT, f"{reason}; sending the files one by one"
        elif code == 429 or code == 408 or code >= 500:
            outcome = st.Outcome.TRANSIENT
            retry_after = _retry_after(response.headers.get("Retry-After"))
        for p in self._sent:
            results[p.uid] = SendResult(
                outcome, None, p.ts, False, reason, p.nbytes, seconds, retry_after
            )
        return results

    @staticmethod
    def _per_instance(
        p: _Pending, answer: InstanceAnswer | None, missing: str, seconds: float
    ) -> SendResult:
        if answer is None:
            # Not stored by the server's word. Orthanc 1.10's plugin answers so for an
            # instance its own storage refused (a Lua filter that raises): sending it again
            # would be refused again, so it fails now, with the reason, and `migrator verify`
            # / `retry` remain for a server that omitted it by mistake.
            return SendResult(st.Outcome.PERMANENT, None, p.ts, False, missing, p.nbytes, seconds)
        status = answer.status
        if answer.stored and status is not None and status != 0:
            outcome = st.classify(status)
            if outcome is not st.Outcome.WARNING:
                outcome = st.Outcome.WARNING  # in ReferencedSOPSequence: stored
        elif answer.stored:
            outcome = st.Outcome.STORED
        elif status is None:
            outcome = st.Outcome.PERMANENT
        else:
            outcome = st.classify(status)
            if outcome in (st.Outcome.STORED, st.Outcome.WARNING):
                outcome = st.Outcome.PERMANENT  # in FailedSOPSequence: not stored
        error = ""
        if outcome is not st.Outcome.STORED:
            if status is None:
                error = "the server failed this instance without a FailureReason"
            else:
                kind = "WarningReason" if answer.stored else "FailureReason"
                error = f"{st.fmt(status)} {st.meaning(status)} (STOW-RS {kind})"
        if p.note:
            error = f"{error}; {p.note}" if error else p.note
        return SendResult(outcome, status, p.ts, False, error, p.nbytes, seconds)


def _http_reason(code: int, phrase: str, body: bytes) -> str:
    text = body[:200].decode("utf-8", "replace").strip().replace("\n", " ")
    return f"HTTP {code} {phrase}" + (f": {text}" if text else "")


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (seconds, or an HTTP date); 0 when absent."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 0.0
        seconds = when.timestamp() - time.time()
    return min(MAX_RETRY_AFTER, max(0.0, seconds))
