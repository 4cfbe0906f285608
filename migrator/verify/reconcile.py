"""Reconciliation: the destination against the **source's inventory**, not only the ledger.

``verify`` of a job planned from an old PACS (``dimse://``) also asks the source, by Study
Root C-FIND, what it holds in each of the job's studies, and compares three figures per
study: instances at the source (NumberOfStudyRelatedInstances), stored per the ledger, and
at the destination. A study whose figures differ (and a sample of the others, or all with
``--full``) is listed instance by instance on both sides (SERIES then IMAGE level), which
names the **missing** instances (at the source, not at the destination: never sent, failed,
lost by the destination after a success, or added to the study at the source after
planning) and the **extra** ones (at the destination, not at the source).

Identifiers carry UIDs, counts and the AccessionNumber only: no patient name or ID is asked
for, kept or printed.

Kept in the job's Redis (:class:`migrator.keys.JobKeys`): ``reconcile`` (the summary),
``reconcile_studies`` (the per-study table of the report) and ``reconcile_missing`` (what
``retry --missing`` sends: each missing instance with its series, SOP class and file id,
when planned). Each :func:`save_reconciliation` replaces the previous one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote

from migrator.exitcodes import ExitStatus
from migrator.ledger import Ledger
from migrator.outcomes import State
from migrator.settings import Settings
from migrator.verify.qido import QidoClient
from migrator.verify.query import QueryClient

log = logging.getLogger("migrator.verify")

#: Missing instances printed in text mode (--json and Redis hold them all).
LISTED = 100


@dataclass(frozen=True, slots=True)
class StudyRow:
    """One study's three figures: the report's completeness table."""

    study_uid: str
    accession: str
    source: int
    stored: int
    destination: int

    @property
    def complete(self) -> bool:
        return self.source == self.stored == self.destination


@dataclass(frozen=True, slots=True)
class MissingInstance:
    """At the source, not at the destination; ``file_id`` empty when never planned."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    file_id: str
    source: str  #: dimse://AE@host:port

    @property
    def uri(self) -> str:
        """The instance as a ``dimse://`` item (what the planner would have named it)."""
        path = (
            f"/studies/{self.study_uid}/series/{self.series_uid}/instances/{self.sop_instance_uid}"
        )
        return f"{self.source}{path}?class={quote(self.sop_class_uid)}"


@dataclass(slots=True)
class Reconciliation:
    job_id: str
    source: str
    destination: str
    checked_at: float = 0.0
    seconds: float = 0.0
    studies_listed: int = 0
    rows: list[StudyRow] = field(default_factory=list)
    missing: list[MissingInstance] = field(default_factory=list)
    #: (study, SOP Instance UID) at the destination, not at the source
    extra: list[tuple[str, str]] = field(default_factory=list)

    @property
    def differing(self) -> list[StudyRow]:
        return [r for r in self.rows if not r.complete]

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.PARTIAL_FAILURE if self.missing else ExitStatus.OK

    def summary(self) -> dict[str, str | int | float]:
        return {
            "checked_at": round(self.checked_at, 3),
            "source": self.source,
            "destination": self.destination,
            "studies": len(self.rows),
            "studies_differing": len(self.differing),
            "studies_listed": self.studies_listed,
            "at_source": sum(r.source for r in self.rows),
            "stored": sum(r.stored for r in self.rows),
            "at_destination": sum(r.destination for r in self.rows),
            "missing": len(self.missing),
            "missing_unplanned": sum(1 for m in self.missing if not m.file_id),
            "extra": len(self.extra),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "seconds": round(self.seconds, 3),
            "studies_table": [_row_json(r) for r in self.rows],
            "missing_instances": [
                {
                    "sop_instance_uid": m.sop_instance_uid,
                    "study_uid": m.study_uid,
                    "series_uid": m.series_uid,
                    "sop_class_uid": m.sop_class_uid,
                    "file_id": m.file_id,
                }
                for m in self.missing
            ],
            "extra_instances": [{"study_uid": s, "sop_instance_uid": i} for s, i in self.extra],
        }


def _row_json(r: StudyRow) -> dict[str, Any]:
    return {
        "study_uid": r.study_uid,
        "accession": r.accession,
        "at_source": r.source,
        "stored": r.stored,
        "at_destination": r.destination,
    }


# -- the job's side ------------------------------------------------------------------------


@dataclass(slots=True)
class _Study:
    planned: dict[str, str] = field(default_factory=dict)  #: SOP Instance UID -> file id
    stored: set[str] = field(default_factory=set)
    roots: set[str] = field(default_factory=set)


def _ledger_studies(ledger: Ledger, *, every_file: bool) -> dict[str, _Study]:
    """Per study: the SOP Instance UIDs planned (with a file id, a stored one first), those
    stored, and the dimse:// sources their files were planned from. Only the files planned
    from a dimse:// source unless ``every_file`` (--against-source): a job from folders
    costs one pass over its ledger and no memory."""
    from migrator.sources.dimse import is_dimse, source_root

    studies: dict[str, _Study] = {}
    for planned, outcome, _ in ledger.iter_files():
        if not planned.study_uid or not planned.sop_instance_uid:
            continue
        if not every_file and not is_dimse(planned.uri):
            continue
        s = studies.setdefault(planned.study_uid, _Study())
        sop = planned.sop_instance_uid
        stored = outcome is not None and outcome.state is State.STORED
        if stored:
            s.stored.add(sop)
        if sop not in s.planned or stored:
            s.planned[sop] = planned.file_id
        if is_dimse(planned.uri):
            s.roots.add(source_root(planned.uri))
    return studies


# -- the source's side ---------------------------------------------------------------------


def source_config(source: str, settings: Settings) -> Settings:
    """The settings to query ``source`` (``dimse://AE@host:port``) with: its address, our
    --source-calling-ae, as the source's own listing asks it."""
    from migrator.sources.dimse import PREFIX, source_root

    ae, _, address = source_root(source)[len(PREFIX) :].partition("@")
    host, _, port = address.rpartition(":")
    return dataclasses.replace(
        settings,
        host=host,
        port=int(port),
        called_ae=ae,
        calling_ae=settings.source_calling_ae or settings.calling_ae,
        dicomweb=None,
        tls=False,
    )


def _source_study(q: QueryClient, study: str) -> tuple[int, str]:
    found = q.find(
        "STUDY", {"StudyInstanceUID": study}, ["NumberOfStudyRelatedInstances", "AccessionNumber"]
    )
    count = sum(int(m.get("NumberOfStudyRelatedInstances", 0) or 0) for m in found)
    accession = next((str(m.get("AccessionNumber", "") or "") for m in found), "")
    return count, accession


def _source_instances(q: QueryClient, study: str) -> Iterator[tuple[str, str, str]]:
    """(series, SOP Instance UID, SOP Class UID) of every instance the source holds."""
    for series in q.find("SERIES", {"StudyInstanceUID": study}, ["SeriesInstanceUID"]):
        se = str(series.get("SeriesInstanceUID", ""))
        if not se:
            continue
        keys = {"StudyInstanceUID": study, "SeriesInstanceUID": se}
        for image in q.find("IMAGE", keys, ["SOPInstanceUID", "SOPClassUID"]):
            yield se, str(image.get("SOPInstanceUID", "")), str(image.get("SOPClassUID", ""))


def reconcile_job(
    ledger: Ledger,
    config: Settings,
    *,
    source: str | None = None,
    sample: int = 10,
    full: bool = False,
) -> Reconciliation | None:
    """Compare the job's studies at ``source`` (default: the ``dimse://`` source they were
    planned from), in the ledger and at the destination ``config``; None when the job has
    no such source. Nothing is written. Raises ConnectError / AssociationRejected /
    PacsQueryError when either side cannot be asked."""
    studies = _ledger_studies(ledger, every_file=source is not None)
    by_root: dict[str, list[str]] = {}
    for uid, s in sorted(studies.items()):
        for root in [source] if source else sorted(s.roots):
            by_root.setdefault(root, []).append(uid)
    if not by_root:
        return None
    started = time.monotonic()
    result = Reconciliation(
        ledger.job_id, ", ".join(sorted(by_root)), config.server, checked_at=time.time()
    )
    missing_sops: set[str] = set()
    dest: QidoClient | QueryClient
    dest = QidoClient(config) if config.dicomweb is not None else QueryClient(config)
    with dest, ExitStack() as stack:
        for root, uids in by_root.items():
            # One C-FIND association (not under --source-max-associations, which caps the
            # workers' fetches: a query waiting behind them would time out).
            q = stack.enter_context(QueryClient(source_config(root, config)))
            counted = []
            for uid in uids:
                at_source, accession = _source_study(q, uid)
                s = studies[uid]
                row = StudyRow(uid, accession, at_source, len(s.stored), dest.study_count(uid))
                counted.append(row)
            # Listed when a figure differs (or the ledger planned another number), else sampled.
            listed = [
                r.study_uid
                for r in counted
                if not r.complete or len(studies[r.study_uid].planned) != r.source
            ]
            matching = [r.study_uid for r in counted if r.study_uid not in set(listed)]
            if full:
                listed += matching
            else:
                pick = random.Random(ledger.job_id).sample(matching, min(sample, len(matching)))
                listed += pick
            result.studies_listed += len(listed)
            rows = {r.study_uid: r for r in counted}
            for uid in listed:
                at_dest = dest.study_instances(uid)
                at_src = {sop: (se, cls) for se, sop, cls in _source_instances(q, uid) if sop}
                # The lists are the figures (NumberOfStudyRelatedInstances is optional: an
                # archive that does not give it would show 0 at the source).
                rows[uid] = dataclasses.replace(
                    rows[uid], source=len(at_src), destination=len(at_dest)
                )
                planned = studies[uid].planned
                for sop in sorted(set(at_src) - at_dest - missing_sops):
                    se, cls = at_src[sop]
                    result.missing.append(
                        MissingInstance(sop, uid, se, cls, planned.get(sop, ""), root)
                    )
                    missing_sops.add(sop)
                result.extra += [(uid, sop) for sop in sorted(at_dest - set(at_src))]
            result.rows += rows.values()
            log.info("reconciled %d studies with %s, %d listed", len(uids), root, len(listed))
    result.seconds = time.monotonic() - started
    return result


# -- kept in Redis -------------------------------------------------------------------------


def save_reconciliation(ledger: Ledger, result: Reconciliation) -> None:
    """Replace the job's last reconciliation with ``result`` (one transaction)."""
    k = ledger.keys
    pipe = ledger.client.pipeline(transaction=True)
    pipe.delete(k.reconcile, k.reconcile_studies, k.reconcile_missing)
    summary: dict[Any, Any] = result.summary()
    pipe.hset(k.reconcile, mapping=summary)
    chunk = 1000
    for i in range(0, len(result.rows), chunk):
        rows = result.rows[i : i + chunk]
        pipe.hset(
            k.reconcile_studies,
            mapping={
                r.study_uid: json.dumps([r.accession, r.source, r.stored, r.destination])
                for r in rows
            },
        )
    for i in range(0, len(result.missing), chunk):
        part = result.missing[i : i + chunk]
        pipe.hset(
            k.reconcile_missing,
            mapping={
                m.sop_instance_uid: json.dumps(
                    {
                        "study": m.study_uid,
                        "series": m.series_uid,
                        "class": m.sop_class_uid,
                        "file": m.file_id,
                        "source": m.source,
                    }
                )
                for m in part
            },
        )
    pipe.execute()


def load_reconciliation(ledger: Ledger) -> dict[str, str] | None:
    """The last reconciliation's summary (strings, as stored), or None if never done."""
    raw = cast(dict[bytes, bytes], ledger.client.hgetall(ledger.keys.reconcile))
    if not raw:
        return None
    return {k.decode(): v.decode() for k, v in raw.items()}


def load_missing_instances(ledger: Ledger) -> list[MissingInstance]:
    """What the last reconciliation found missing at the destination."""
    raw = cast(dict[bytes, bytes], ledger.client.hgetall(ledger.keys.reconcile_missing))
    out = []
    for sop, value in raw.items():
        d = json.loads(value)
        out.append(
            MissingInstance(
                sop.decode(), d["study"], d["series"], d["class"], d["file"], d["source"]
            )
        )
    return sorted(out, key=lambda m: (m.study_uid, m.sop_instance_uid))
