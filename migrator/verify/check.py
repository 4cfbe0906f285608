"""``verify_job``: the whole check of a job, C-FIND counts and lists, then storage commitment.

The steps and why they are needed are in the package's docstring (:mod:`migrator.verify`).
Nothing is written: :func:`migrator.verify.result.save_result` keeps the result.
"""

from __future__ import annotations

import logging
import random
import time

from migrator.errors import ConfigError
from migrator.ledger import Ledger
from migrator.settings import Settings
from migrator.verify.commitment import CommitmentSettings, commit
from migrator.verify.qido import PAGE as QIDO_PAGE
from migrator.verify.qido import QidoClient
from migrator.verify.query import QueryClient
from migrator.verify.result import FileProblem, StudyCount, VerifyResult
from migrator.verify.stored import files_for, stored_files

log = logging.getLogger("migrator.verify")  # one logger for the whole package, as before


def verify_job(
    ledger: Ledger,
    config: Settings,
    *,
    sample: int = 10,
    full: bool = False,
    commitment: CommitmentSettings | None = None,
    qido_page: int = QIDO_PAGE,
) -> VerifyResult:
    """Compare the ledger's stored files with what the PACS holds; nothing is written.

    ``sample``: studies whose count matches that are still listed instance by instance
    (chosen at random, seeded by the job id so a re-run checks the same ones); ``full``: list
    every study. Raises ConnectError / AssociationRejected / PacsQueryError when the PACS
    cannot be asked. A DICOMweb destination (``config.dicomweb``) is asked over QIDO-RS
    (``qido_page`` results per request), with the same steps and the same result; storage
    commitment is DIMSE only (ConfigError). Memory: the distinct SOP Instance UIDs of the
    job (~100 bytes each).
    """
    started = time.monotonic()
    dicomweb = config.dicomweb is not None
    if dicomweb and commitment is not None:
        raise ConfigError("storage commitment is DIMSE; a DICOMweb destination offers none")
    result = VerifyResult(ledger.job_id, config.server, checked_at=time.time())
    result.query = "qido-rs" if dicomweb else "c-find"
    result.in_flight = max(0, ledger.counts()["in_flight"])
    by_study: dict[str, set[str]] = {}
    no_study: list[FileProblem] = []
    for rows in stored_files(ledger):
        for fid, uri, _, sop, study in rows:
            result.stored += 1
            if study and sop:
                by_study.setdefault(study, set()).add(sop)
            else:
                no_study.append(FileProblem(fid, uri, sop, study, "no Study Instance UID known"))
    result.studies = len(by_study)
    result.instances = sum(len(s) for s in by_study.values())

    reasons: dict[str, str] = {}  # missing SOP Instance UID → why
    pacs: QidoClient | QueryClient
    pacs = QidoClient(config, page=qido_page) if dicomweb else QueryClient(config)
    with pacs:
        matching: list[str] = []
        to_list: list[str] = []
        for study, sops in sorted(by_study.items()):
            count = pacs.study_count(study)
            if count == len(sops):
                matching.append(study)
                continue
            result.mismatched.append(StudyCount(study, len(sops), count))
            if count == 0:  # the whole study is absent: nothing to list
                reasons.update(dict.fromkeys(sops, f"study not found by {pacs.name}"))
            else:
                to_list.append(study)
        if full:
            to_list += matching
        else:
            to_list += random.Random(ledger.job_id).sample(matching, min(sample, len(matching)))
        for study in to_list:
            held = pacs.study_instances(study)
            for sop in by_study[study] - held:
                reasons[sop] = f"not found by {pacs.name} in its study"
        result.studies_listed = len(to_list)
        log.info(
            "%s: %d studies counted, %d listed, %d queries",
            pacs.name,
            len(by_study),
            len(to_list),
            pacs.queries,
        )
    del by_study

    unanswered: dict[str, str] = {}
    if commitment is not None:
        result.commitment = True
        committed, failed, unanswered = commit(config, ledger, commitment)
        result.committed = committed
        for sop, why in failed.items():
            reasons.setdefault(sop, why)  # C-FIND's finding first: it names the study
        unanswered = {s: w for s, w in unanswered.items() if s not in reasons}
    if reasons:
        result.missing = files_for(ledger, reasons)
    no_study = [p for p in no_study if p.sop_instance_uid not in reasons]  # counted once
    result.unconfirmed = no_study + (files_for(ledger, unanswered) if unanswered else [])
    result.seconds = time.monotonic() - started
    return result
