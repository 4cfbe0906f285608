"""Coercion rules on files (issue 18): what a receiver would read after the transform, and
the errors that name element and rule (the sender adds the file: tests/test_coerce_peers.py).

Each file is coerced as a sender does (``Coercer`` on the inspected header and a payload
naming the file) and the spliced result is read whole by pydicom: the elements the rules
name changed, every other element and the pixel data byte for byte as in the original.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from migrator.coerce import CoercionError, CoercionSkipped
from migrator.coerce.rules import RulesError, load_rules
from migrator.dicomfile import inspect_file
from migrator.synth.dataset import make_dataset, write_dataset
from tests.coercehelpers import coerce, dicom_file, received, write_rules

MAP_RULES = """
rules:
  - name: new-ids
    map: patients.csv
    match: PatientID
    missing: {policy}
"""
PATIENTS = """
PatientID,PatientID,IssuerOfPatientID
OLD1,NEW1,HOSP-B
OLD2,NEW2,HOSP-B
"""


def unchanged_except(before: Dataset, after: Dataset, *keywords: str) -> list[str]:
    """Elements of ``before`` that differ in ``after``, other than ``keywords``."""
    skip = {pydicom.datadict.tag_for_keyword(k) for k in keywords}
    return [str(e.tag) for e in before if e.tag not in skip and after.get(e.tag) != e]


def test_a_mapping_table_renames_the_patient_and_adds_the_issuer_nothing_else_changes(
    tmp_path: Path,
) -> None:
    rules = write_rules(tmp_path / "r", MAP_RULES.format(policy="fail"), patients=PATIENTS)
    f = dicom_file(tmp_path / "a.dcm", PatientID="OLD2")
    header, payload = coerce(rules, f)
    after, before = received(header, payload), pydicom.dcmread(f)
    assert (after.PatientID, after.IssuerOfPatientID) == ("NEW2", "HOSP-B")
    assert unchanged_except(before, after, "PatientID", "IssuerOfPatientID") == []
    assert after.PixelData == before.PixelData
    # Only the region before the first element no rule needs was rewritten; the rest (and
    # the pixel data) is streamed from the file.
    assert payload.resume < f.stat().st_size - len(before.PixelData)
    assert "new-ids" in header.note and "2 element(s)" in header.note
    assert "NEW2" not in header.note and "OLD2" not in header.note  # a digest, not values


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_implicit_and_big_endian_files_are_coerced_in_their_own_encoding(
    tmp_path: Path, syntax: str
) -> None:
    rules = write_rules(tmp_path / "r", MAP_RULES.format(policy="fail"), patients=PATIENTS)
    ds = make_dataset("CT", rows=16, cols=16, transfer_syntax=syntax, patient_id="OLD1")
    f = write_dataset(ds, tmp_path / "a.dcm")
    header, payload = coerce(rules, f)
    after, before = received(header, payload), pydicom.dcmread(f)
    assert (after.PatientID, after.IssuerOfPatientID) == ("NEW1", "HOSP-B")
    assert unchanged_except(before, after, "PatientID", "IssuerOfPatientID") == []
    assert after.PixelData == before.PixelData


def test_a_file_no_rule_changes_keeps_the_zero_copy_payload(tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "r", MAP_RULES.format(policy="keep"), patients=PATIENTS)
    f = dicom_file(tmp_path / "a.dcm", PatientID="SOMEONE-ELSE")
    header, payload = coerce(rules, f)
    assert payload.head is None and header == inspect_file(str(f))


def test_a_missing_value_under_each_policy(tmp_path: Path) -> None:
    f = dicom_file(tmp_path / "a.dcm", PatientID="NOT-IN-TABLE")
    for policy in ("keep", "fail", "skip"):
        rules = write_rules(tmp_path / policy, MAP_RULES.format(policy=policy), patients=PATIENTS)
        if policy == "keep":
            _, payload = coerce(rules, f)
            assert payload.head is None
            continue
        kind = CoercionSkipped if policy == "skip" else CoercionError
        with pytest.raises(kind) as info:
            coerce(rules, f)
        message = str(info.value)
        assert "PatientID" in message and "rule new-ids" in message and "patients.csv" in message
        assert "NOT-IN-TABLE" not in message  # the value is patient data
        assert (policy == "skip") == isinstance(info.value, CoercionSkipped)


def test_a_rule_inside_a_sequence_changes_every_item_and_only_there(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path / "r",
        """
        rules:
          - name: other-issuer
            replace: OtherPatientIDsSequence[*].IssuerOfPatientID
            old: OLDHOSP
            new: NEWHOSP
          - name: first-code
            set: ProcedureCodeSequence[0].CodeMeaning
            value: Renamed
        """,
    )
    ds = make_dataset("CT", rows=16, cols=16)
    items = []
    for pid, issuer in (("X1", "OLDHOSP"), ("X2", "KEEP")):
        item = Dataset()
        item.PatientID, item.IssuerOfPatientID = pid, issuer
        items.append(item)
    ds.OtherPatientIDsSequence = Sequence(items)
    codes = []
    for value in ("C1", "C2"):
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "L", "Old"
        codes.append(code)
    ds.ProcedureCodeSequence = Sequence(codes)
    ds.IssuerOfPatientID = "OLDHOSP"  # top level: not named by the rule
    f = write_dataset(ds, tmp_path / "a.dcm")
    header, payload = coerce(rules, f)
    after = received(header, payload)
    assert [i.IssuerOfPatientID for i in after.OtherPatientIDsSequence] == ["NEWHOSP", "KEEP"]
    assert [i.CodeMeaning for i in after.ProcedureCodeSequence] == ["Renamed", "Old"]
    assert after.IssuerOfPatientID == "OLDHOSP"
    assert after.PixelData == ds.PixelData
    assert set(header.note.split(":")[0].split("by ")[1].split(", ")) == {
        "other-issuer",
        "first-code",
    }


def test_a_regex_rule_and_a_conditional_rule(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path / "r",
        """
        rules:
          - name: study-desc
            regex: StudyDescription
            pattern: '^CT (.*)$'
            replacement: 'CT-\\1'
          - name: ct-only
            set: InstitutionName
            value: New Hospital
            when: {Modality: [CT, MR], PatientID: {matches: '^P'}}
        """,
    )
    ct = dicom_file(tmp_path / "ct.dcm", StudyDescription="CT HEAD", PatientID="P1")
    mr = dicom_file(tmp_path / "mr.dcm", StudyDescription="MR HEAD", PatientID="P2", Modality="MR")
    us = dicom_file(tmp_path / "us.dcm", StudyDescription="US", PatientID="P3", Modality="US")
    other = dicom_file(tmp_path / "other.dcm", StudyDescription="CT X", PatientID="Q4")
    got = {}
    for f in (ct, mr, us, other):
        got[f.stem] = received(*coerce(rules, f))
    assert got["ct"].StudyDescription == "CT-HEAD" and got["ct"].InstitutionName == "New Hospital"
    assert got["mr"].StudyDescription == "MR HEAD" and got["mr"].InstitutionName == "New Hospital"
    assert got["us"].get("InstitutionName") != "New Hospital"
    assert got["other"].StudyDescription == "CT-X"
    assert got["other"].get("InstitutionName") != "New Hospital"  # PatientID condition


def test_a_value_too_long_for_its_vr_fails_naming_element_and_rule_never_truncated(
    tmp_path: Path,
) -> None:
    rules = write_rules(
        tmp_path / "r",
        """
        rules:
          - name: long-prefix
            prefix: PatientID
            value: 'AVERYLONGPREFIX-FOR-THE-NEW-DOMAIN-'
        """,
    )
    f = dicom_file(tmp_path / "a.dcm", PatientID="P" * 40)
    with pytest.raises(CoercionError) as info:
        coerce(rules, f)
    message = str(info.value)
    assert "PatientID" in message and "rule long-prefix" in message and "line 2" in message
    assert "too long for LO" in message and "at most 64" in message


@pytest.mark.parametrize(("charset", "codec"), [("ISO_IR 192", "utf-8"), ("ISO_IR 100", "latin-1")])
def test_a_non_ascii_name_is_encoded_in_the_files_character_set(
    tmp_path: Path, charset: str, codec: str
) -> None:
    rules = write_rules(
        tmp_path / "r",
        """
        rules:
          - name: rename
            replace: PatientName
            old: Muller^Jorg
            new: Müller^Jörg
        """,
    )
    f = dicom_file(tmp_path / "a.dcm", SpecificCharacterSet=charset, PatientName="Muller^Jorg")
    header, payload = coerce(rules, f)
    after = received(header, payload)
    assert after.PatientName == "Müller^Jörg"
    assert after["PatientName"].value.original_string.rstrip(b" ") == "Müller^Jörg".encode(codec)


@pytest.mark.parametrize("charset", ["ISO_IR 100", ""])
def test_a_name_the_files_character_set_cannot_hold_fails_naming_element_and_rule(
    tmp_path: Path, charset: str
) -> None:
    rules = write_rules(
        tmp_path / "r",
        """
        rules:
          - name: rename
            set: PatientName
            value: Łukasz^Żółć
        """,
    )
    f = dicom_file(tmp_path / "a.dcm", SpecificCharacterSet=charset or None)
    with pytest.raises(CoercionError) as info:
        coerce(rules, f)
    message = str(info.value)
    assert "PatientName" in message and "rule rename" in message and "cannot be encoded" in message


def test_copy_delete_and_group_length_after_a_change(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path / "r",
        """
        rules:
          - copy: PatientID
            to: OtherPatientIDs
          - delete: InstitutionName
        """,
    )
    ds = make_dataset("CT", rows=16, cols=16, patient_id="P77")
    ds.InstitutionName = "Old"
    # Group Length elements (retired, PS3.5 7.2) of a changed group (0008, 0010) would be
    # wrong after the change: dropped; one of a group no rule touches (0018) stays.
    f = with_group_lengths(write_dataset(ds, tmp_path / "a.dcm"), (0x0008, 0x0010, 0x0018))
    header, payload = coerce(rules, f)
    after = received(header, payload)
    assert after.OtherPatientIDs == "P77" and "InstitutionName" not in after
    assert after.PixelData == ds.PixelData
    assert 0x00080000 not in after and 0x00100000 not in after
    assert 0x00180000 in after


def with_group_lengths(path: Path, groups: tuple[int, ...]) -> Path:
    """``path`` with Group Length elements added (pydicom drops them when writing)."""
    import struct

    from migrator.coerce.elements import Element, Encoding, encode, parse_region

    header = inspect_file(str(path))
    raw = path.read_bytes()
    enc = Encoding.of(header.transfer_syntax)
    ds, end = parse_region(raw[header.dataset_offset :], enc, 0x7FE00000, at_end=True)
    for group in groups:
        element = struct.pack("<HH2sHI", group, 0, b"UL", 4, 0)
        ds.elements[group << 16] = Element(group << 16, "UL", element[8:], raw=element)
    head = encode(ds, enc)
    path.write_bytes(raw[: header.dataset_offset] + head + raw[header.dataset_offset + end :])
    assert all(group << 16 in pydicom.dcmread(path) for group in groups)
    return path


def test_uids_change_only_when_a_rule_says_so(tmp_path: Path) -> None:
    bad = write_rules(tmp_path / "bad", "rules:\n  - set: StudyInstanceUID\n    value: 1.2.3\n")
    with pytest.raises(RulesError, match=r"line 2: StudyInstanceUID is a UID: add 'allow_uid"):
        load_rules(str(bad))
    ok = write_rules(
        tmp_path / "ok",
        "rules:\n  - set: StudyInstanceUID\n    value: 1.2.3.4\n    allow_uid: true\n",
    )
    f = dicom_file(tmp_path / "a.dcm")
    header, payload = coerce(ok, f)
    assert header.study_uid == "1.2.3.4" and received(header, payload).StudyInstanceUID == "1.2.3.4"
    assert header.sop_instance_uid == pydicom.dcmread(f).SOPInstanceUID


@pytest.mark.parametrize(
    ("text", "tables", "expected"),
    [
        ("rules:\n  - set: PatientID\n", {}, r"line 2: set needs 'value'"),
        ("rules:\n  - set: NoSuchKeyword\n    value: x\n", {}, r"line 2: 'NoSuchKeyword' is not"),
        ("rules:\n  - set: Modality\n    value: ct\n", {}, r"line 3: Modality: not a valid CS"),
        (
            "rules:\n  - set: PatientID\n    value: x\n    colour: red\n",
            {},
            r"line 4: set: unknown",
        ),
        (
            "rules:\n  - regex: PatientID\n    pattern: '('\n    replacement: x\n",
            {},
            r"line 3: not a valid regex",
        ),
        (
            "rules:\n- map: t.csv\n  match: PatientID\n",
            {"t": "PatientID,PatientID\nA,B\nC\n"},
            r"t.csv: line 3: 1 column",
        ),
        (
            "rules:\n- map: t.csv\n  match: PatientID\n",
            {"t": "PatientID,PatientID\nA,B\nA,C\n"},
            r"line 3: the same PatientID as line 2",
        ),
        (
            "rules:\n- map: t.csv\n  match: PatientID\n",
            {"t": f"PatientID,PatientID\nA,{'B' * 65}\n"},
            r"line 2: column PatientID: too long for LO",
        ),
        ("rules:\n  - set: PatientID\n   value: x\n", {}, r"line \d: not valid YAML"),
    ],
)
def test_a_bad_rules_file_is_refused_with_its_line(
    tmp_path: Path, text: str, tables: dict[str, str], expected: str
) -> None:
    rules = write_rules(tmp_path / "r", text, **tables)
    with pytest.raises(RulesError, match=expected):
        load_rules(str(rules))


@pytest.mark.parametrize("command", ["store", "plan"])
def test_the_commands_exit_2_on_a_bad_rules_file_before_anything_is_sent(
    tmp_path: Path, command: str
) -> None:
    rules = write_rules(tmp_path / "r", "rules:\n  - set: PatientID\n    value: x\n    to: y\n")
    f = dicom_file(tmp_path / "in" / "a.dcm")
    where = ["--dir", str(f.parent)] if command == "store" else [str(f.parent)]
    args = [
        sys.executable,
        "-m",
        "migrator",
        command,
        *where,
        "--host",
        "127.0.0.1",
        "--port",
        "9",
        "--coerce",
        str(rules),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"{rules}: line 4: set: unknown key 'to'" in proc.stderr


def test_a_sender_whose_rules_differ_from_the_checked_ones_fails_each_file(tmp_path: Path) -> None:
    """A worker reads the rules named in the job's settings; a copy changed since the
    command checked it would send other values, so each file fails with the reason."""
    from migrator.settings import Settings
    from migrator.sources.base import Payload
    from migrator.transfer.transform import identity, make_transform

    rules = write_rules(tmp_path / "r", MAP_RULES.format(policy="fail"), patients=PATIENTS)
    checked = load_rules(str(rules))
    assert make_transform(Settings(host="h")) is identity
    f = dicom_file(tmp_path / "a.dcm", PatientID="OLD1")
    header = inspect_file(str(f))
    same = make_transform(Settings(host="h", coerce=checked.path, coerce_digest=checked.digest))
    assert same(header, Payload(path=str(f)))[1].head is not None
    (rules.parent / "patients.csv").write_text(PATIENTS.replace("NEW1", "OTHER1").lstrip())
    changed = make_transform(Settings(host="h", coerce=checked.path, coerce_digest="0" * 64))
    with pytest.raises(CoercionError, match="changed since the command checked it"):
        changed(header, Payload(path=str(f)))
