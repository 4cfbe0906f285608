"""Coercion into a real Orthanc through both front ends, one test body each (issue 18).

A corpus of 3 patients x 2 studies goes through a mapping table that renames the Patient
IDs and adds an Issuer of Patient ID: Orthanc then knows only the new patients, holds every
instance, and each one's pixel data (and every element the rules do not name) is byte for
byte the original's. A second corpus has files the rules refuse: their report entries name
the file, the element and the rule, and the totals add up.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from migrator.synth.dataset import derived_uid, make_dataset, write_dataset
from tests.behaviourhelpers import FRONT_ENDS, Problems, send
from tests.coercehelpers import write_rules
from tests.peers.orthanc import OrthancPeer
from tests.peers.redis import RedisPeer

RULES = """
rules:
  - name: new-domain
    map: patients.csv
    match: PatientID
    missing: fail
"""
TABLE = """
PatientID,PatientID,IssuerOfPatientID
OLD-1,NEW-1,HOSP-B
OLD-2,NEW-2,HOSP-B
OLD-3,NEW-3,HOSP-B
"""


def corpus(folder: Path, patients: int = 3, studies: int = 2, per_study: int = 2) -> list[Path]:
    folder.mkdir(parents=True)
    files = []
    for p in range(1, patients + 1):
        for s in range(studies):
            study = derived_uid("coerce", p, s)
            series = derived_uid("coerce", p, s, "series")
            for i in range(per_study):
                ds = make_dataset(
                    "CT",
                    rows=32,
                    cols=32,
                    seed=p * 100 + s * 10 + i,
                    study_uid=study,
                    series_uid=series,
                    patient_id=f"OLD-{p}",
                    instance_number=i + 1,
                )
                files.append(write_dataset(ds, folder / f"p{p}-s{s}-{i}.dcm"))
    return files


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_a_mapping_table_renames_the_patients_in_orthanc_pixel_data_untouched(
    front_end: str, orthanc: OrthancPeer, tmp_path: Path
) -> None:
    files = corpus(tmp_path / "in")
    rules = write_rules(tmp_path / "rules", RULES, patients=TABLE)
    result = send(
        front_end, tmp_path / "in", orthanc.dicom_port, "ORTHANC", tmp_path, "--coerce", rules
    )
    p = Problems()
    p.check(result.rc == 0, f"exit {result.rc}")
    totals = result.totals()
    p.check(totals["stored"] == len(files) == 12, f"totals {totals}")
    patients = {
        orthanc.get(f"/patients/{i}")["MainDicomTags"]["PatientID"]
        for i in orthanc.get("/patients")
    }
    p.check(patients == {"NEW-1", "NEW-2", "NEW-3"}, f"Orthanc's patients: {patients}")
    p.check(orthanc.count_instances() == len(files), "not every instance arrived")
    for f in files:
        original = pydicom.dcmread(f)
        oid = orthanc.find_instance(original.SOPInstanceUID)
        if not p.check(oid, f"{f.name} is not in Orthanc"):
            continue
        assert oid is not None
        stored = pydicom.dcmread(io.BytesIO(orthanc.get_file(oid)))
        p.check(stored.PixelData == original.PixelData, f"{f.name}: pixel data differs")
        p.check(
            (stored.PatientID, stored.IssuerOfPatientID)
            == (original.PatientID.replace("OLD", "NEW"), "HOSP-B"),
            f"{f.name}: {stored.PatientID} / {stored.get('IssuerOfPatientID')}",
        )
        others = [
            str(e.tag)
            for e in original
            if e.keyword not in ("PatientID", "PixelData") and stored.get(e.tag) != e
        ]
        p.check(not others, f"{f.name}: elements changed that no rule names: {others}")
        entry = result.files()[f.name]
        p.check("coerced by new-domain" in entry["reason"], f"{f.name}: {entry['reason']!r}")
        p.check(
            "OLD-" not in entry["reason"] and "NEW-" not in entry["reason"],
            "the report carries the values",
        )
    p.done(result)


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_files_the_rules_refuse_are_failed_or_skipped_naming_file_element_and_rule(
    front_end: str, orthanc: OrthancPeer, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rules = write_rules(
        tmp_path / "rules",
        """
        rules:
          - name: ct-ids
            map: patients.csv
            match: PatientID
            missing: skip
            when: {Modality: CT}
          - name: mr-ids
            map: patients.csv
            match: PatientID
            missing: fail
            when: {Modality: MR}
          - name: acc-prefix
            prefix: AccessionNumber
            value: 'B-'
        """,
        patients=TABLE,
    )
    made = {
        "good.dcm": ("CT", "OLD-1", "A1"),
        "unmapped-ct.dcm": ("CT", "STRANGER", "A2"),
        "unmapped-mr.dcm": ("MR", "STRANGER", "A3"),
        "long-acc.dcm": ("CT", "OLD-2", "A" * 15),
    }
    for n, (name, (modality, pid, acc)) in enumerate(made.items()):
        ds = make_dataset(modality, rows=16, cols=16, seed=n, patient_id=pid, accession=acc)
        write_dataset(ds, folder / name)
    result = send(front_end, folder, orthanc.dicom_port, "ORTHANC", tmp_path, "--coerce", rules)
    p = Problems()
    files = result.files()
    p.check(result.totals()["stored"] == 1, f"{result.totals()}")
    p.check(
        result.totals()["failed"] == 2 and result.totals()["skipped"] == 1, f"{result.totals()}"
    )
    p.check(result.rc == 1, f"exit {result.rc} with failed files")
    expected = {
        "unmapped-ct.dcm": ("skipped", ["PatientID", "rule ct-ids", "missing: skip"]),
        "unmapped-mr.dcm": ("failed", ["PatientID", "rule mr-ids", "missing: fail"]),
        "long-acc.dcm": ("failed", ["AccessionNumber", "rule acc-prefix", "too long for SH"]),
    }
    for name, (state, words) in expected.items():
        entry = files[name]
        p.check(entry["state"] == state, f"{name}: {entry['state']}, expected {state}")
        reason = entry["reason"]
        for word in [str(folder / name), *words]:
            p.check(word in reason, f"{name}: {word!r} not in {reason!r}")
        p.check("STRANGER" not in reason, f"{name}: the reason carries the value")
    p.check(orthanc.count_instances() == 1, "only the good file may arrive")
    p.done(result)


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("way", ["stow-rs", "re-encoded"])
def test_a_coerced_file_sent_by_stow_rs_or_re_encoded_keeps_its_new_values(
    front_end: str, way: str, orthanc_factory: Callable[..., OrthancPeer], tmp_path: Path
) -> None:
    """The two ways a coerced file is not streamed by DIMSE as stored: STOW-RS (a new File
    Meta in front of the spliced dataset) and re-encoding, when the PACS does not take the
    file's syntax (here JPEG 2000 into an Orthanc without compressed syntaxes)."""
    folder = tmp_path / "in"
    folder.mkdir()
    syntax = JPEG2000Lossless if way == "re-encoded" else ExplicitVRLittleEndian
    ds = make_dataset("CT", rows=32, cols=32, transfer_syntax=syntax, patient_id="OLD-1")
    write_dataset(ds, folder / "a.dcm")
    rules = write_rules(tmp_path / "rules", RULES, patients=TABLE)
    if way == "stow-rs":
        pacs = orthanc_factory(dicomweb=True)
        dest = ["--dicomweb", pacs.dicomweb_url]
    else:
        pacs = orthanc_factory(compression="none")
        dest = []
    result = send(
        front_end, folder, pacs.dicom_port, "ORTHANC", tmp_path, "--coerce", rules, dest=dest
    )
    p = Problems()
    p.check(result.rc == 0 and result.totals()["stored"] == 1, f"exit {result.rc}")
    oid = pacs.find_instance(ds.SOPInstanceUID)
    if p.check(oid, "not in Orthanc") and oid is not None:
        stored = pydicom.dcmread(io.BytesIO(pacs.get_file(oid)))
        p.check(
            (stored.PatientID, stored.IssuerOfPatientID) == ("NEW-1", "HOSP-B"),
            f"{stored.PatientID} / {stored.get('IssuerOfPatientID')}",
        )
        if way == "re-encoded":
            ds.decompress()
        else:
            p.check(stored.file_meta.TransferSyntaxUID == syntax, "sent in another syntax")
        p.check(stored.PixelData == ds.PixelData, "pixel data differs")
    p.done(result)


def test_a_job_is_resumed_only_with_the_rules_it_was_created_with(
    redis_server: RedisPeer, tmp_path: Path
) -> None:
    """Its workers apply the rules stored with the job: `plan` (and `run`) again without
    them, or after they changed, is refused (exit 2) rather than silently sending with
    others."""
    corpus(tmp_path / "in", patients=1, studies=1, per_study=1)
    rules = write_rules(tmp_path / "rules", RULES, patients=TABLE)

    def plan(*extra: str | Path) -> subprocess.CompletedProcess[str]:
        args = [
            sys.executable,
            "-m",
            "migrator",
            "plan",
            str(tmp_path / "in"),
            "--host",
            "127.0.0.1",
            "--port",
            "9",
            "--no-preflight",
            "--redis-url",
            redis_server.url,
            *map(str, extra),
        ]
        return subprocess.run(args, capture_output=True, text=True, timeout=120)

    assert plan("--coerce", rules).returncode == 0
    assert plan("--coerce", rules).returncode == 0  # the same rules: resumed
    refused = plan()
    assert refused.returncode == 2, refused.stderr
    assert f"was created with --coerce {rules}" in refused.stderr
    (rules.parent / "patients.csv").write_text(TABLE.replace("NEW-3", "NEW-9").lstrip())
    changed = plan("--coerce", rules)
    assert changed.returncode == 2 and "those rules, unchanged" in changed.stderr
