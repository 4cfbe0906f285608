"""Which of these instances the destination already holds, asked in batches.

Two users: a batch taken over from a delivery that died (or was cut off) before it could
record what it sent (migrator/transfer/batch.py: those files are looked up instead of sent
again), and the destination pre-check of a coerced migration (an instance already there
under another patient or study is a conflict, not a send).

DIMSE: C-FIND at IMAGE level with a list of SOP Instance UIDs (UID list matching, PS3.4
C.2.2.2.2), ``CHUNK`` UIDs per query, asking for PatientID and StudyInstanceUID back. The
query carries no Study or Series UID on purpose: a copy filed under another study is what
the pre-check looks for. A PACS that insists on the hierarchy (a failure status for a
query without the levels above) is asked again one study at a time with the study's UID;
one that refuses that too raises :class:`~migrator.verify.pacs.PacsQueryError`. DICOMweb:
QIDO-RS ``{root}/instances?SOPInstanceUID=a,b,…`` (UID list matching, PS3.18 8.3.4.1).

Only UIDs and the PatientID travel; nothing here is logged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from migrator.dicomweb.qido import SOP_INSTANCE_UID, STUDY_INSTANCE_UID, value
from migrator.errors import PacsQueryError
from migrator.settings import Settings
from migrator.verify.qido import QidoClient
from migrator.verify.query import QueryClient

#: SOP Instance UIDs per query: 100 x 64 bytes keeps a C-FIND request in one small PDU and
#: a QIDO-RS URL under the 8 KB many HTTP servers accept.
CHUNK = 100
PATIENT_ID = "00100020"


@dataclass(frozen=True, slots=True)
class Held:
    """What the destination says of one instance it holds."""

    study_uid: str
    patient_id: str


def held_instances(config: Settings, wanted: Iterable[tuple[str, str]]) -> dict[str, Held]:
    """The instances of ``wanted`` ((StudyInstanceUID, SOPInstanceUID) pairs; the study may
    be "") that the job's destination holds, by SOP Instance UID. Raises ConnectError when
    the destination cannot be reached, PacsQueryError when it refuses the query."""
    pairs = list(dict.fromkeys(wanted))
    if not pairs:
        return {}
    if config.dicomweb:
        with QidoClient(config) as qido:
            return _by_qido(qido, pairs)
    with QueryClient(config) as pacs:
        return _by_cfind(pacs, pairs)


def _by_cfind(pacs: QueryClient, pairs: list[tuple[str, str]]) -> dict[str, Held]:
    found: dict[str, Held] = {}
    try:
        for chunk in _chunks([sop for _, sop in pairs]):
            found.update(_cfind(pacs, {}, chunk))
        return found
    except PacsQueryError:
        pass  # a strictly hierarchical PACS: once more, one study at a time
    by_study: dict[str, list[str]] = defaultdict(list)
    for study, sop in pairs:
        by_study[study].append(sop)
    found = {}
    for study, sops in by_study.items():
        keys = {"StudyInstanceUID": study} if study else {}
        for chunk in _chunks(sops):
            found.update(_cfind(pacs, keys, chunk))
    return found


def _cfind(pacs: QueryClient, keys: dict[str, str], sops: list[str]) -> dict[str, Held]:
    matches = pacs.find(
        "IMAGE",
        {**keys, "SOPInstanceUID": "\\".join(sops)},
        [k for k in ("StudyInstanceUID", "PatientID") if k not in keys],
    )
    wanted = set(sops)
    found = {}
    for m in matches:
        sop = str(m.get("SOPInstanceUID", "") or "")
        if sop in wanted:  # exact: a PACS answering more than asked adds nothing
            study = str(m.get("StudyInstanceUID", "") or keys.get("StudyInstanceUID", ""))
            found[sop] = Held(study, str(m.get("PatientID", "") or ""))
    return found


def _by_qido(qido: QidoClient, pairs: list[tuple[str, str]]) -> dict[str, Held]:
    found: dict[str, Held] = {}
    for chunk in _chunks([sop for _, sop in pairs]):
        params = {
            "SOPInstanceUID": ",".join(chunk),
            "includefield": f"{STUDY_INSTANCE_UID},{PATIENT_ID}",
        }
        wanted = set(chunk)
        for m in qido.http.matches("/instances", SOP_INSTANCE_UID, params):
            sop = value(m, SOP_INSTANCE_UID) or ""
            if sop in wanted:
                found[sop] = Held(value(m, STUDY_INSTANCE_UID) or "", value(m, PATIENT_ID) or "")
    return found


def _chunks(uids: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(uids), CHUNK):
        yield uids[i : i + CHUNK]
