"""``--dry-run`` with ``--coerce`` (issue 18): the rules on a sample, before and after.

Through every front end that takes ``--coerce`` (`store`, `run`, `plan`), as a user types
it: the output names each changed element and the rule that changed it, shows no patient
value (neither the old nor the new one) unless ``--show-phi``, and the destination sees
not even a connection (a listening socket that would accept one); `run` plans nothing
(its state directory is never created). A rule that fails on a sampled file (a value too
long for its VR, a value missing from a table under ``missing: fail``) makes the exit
code 1, with the file, the element and the rule named.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrator.coerce.preview import Masker, reservoir
from migrator.sources.base import SourceItem
from tests.coercehelpers import dicom_file, write_rules
from tests.storehelpers import run_migrator

FRONT_ENDS = ["store", "run", "plan"]
RULES = """
rules:
  - name: new-domain
    map: patients.csv
    match: PatientID
    missing: fail
  - name: accession-prefix
    prefix: AccessionNumber
    value: 'B-'
  - name: no-birth-date
    delete: PatientBirthDate
"""
TABLE = """
PatientID,PatientID,IssuerOfPatientID
PID-7731,NEWPID-0001,HOSP-B
PID-7732,NEWPID-0002,HOSP-B
"""
#: Every patient value of the corpus and of the table (none may appear masked)
PHI = ["PID-7731", "PID-7732", "NEWPID-0001", "NEWPID-0002", "HOSP-B", "Zebulon", "19671104"]
PHI += ["ACC-40411", "ACC-40412", "B-ACC-40411"]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A destination that would accept any connection: none may reach it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        s.setblocking(False)
        yield s


def nothing_reached(s: socket.socket) -> bool:
    try:
        conn, _ = s.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def corpus(folder: Path, *, bad: bool = False) -> None:
    for n, pid in enumerate(["PID-7731", "PID-7732"]):
        dicom_file(
            folder / f"f{n}.dcm",
            PatientID=pid,
            PatientName="Zebulon^Quartermain",
            PatientBirthDate="19671104",
            AccessionNumber=f"ACC-4041{n + 1}",
        )
    if bad:
        # Not in the table (missing: fail), and an accession the prefix makes too long
        dicom_file(folder / "g-missing.dcm", PatientID="PID-9999", AccessionNumber="A1")
        dicom_file(folder / "h-long.dcm", PatientID="PID-7731", AccessionNumber="ACC-12345678901")


def dry_run(
    front_end: str, folder: Path, port: int, tmp_path: Path, *extra: str | Path
) -> tuple[int, str]:
    dest = ["--host", "127.0.0.1", "--port", str(port), "--called-ae", "NOBODY"]
    rules = tmp_path / "rules" / "rules.yaml"
    if front_end == "store":
        args: list[str | Path] = ["store", "--dir", folder, "-R"]
    else:
        args = [front_end, folder]
    if front_end == "run":
        args += ["--state-dir", tmp_path / "state"]
    proc = run_migrator(*args, *dest, "--coerce", rules, "--dry-run", *extra, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_dry_run_shows_each_change_and_its_rule_masked_and_sends_nothing(
    front_end: str, listener: socket.socket, tmp_path: Path
) -> None:
    corpus(tmp_path / "in")
    write_rules(tmp_path / "rules", RULES, patients=TABLE)
    port = listener.getsockname()[1]
    rc, out = dry_run(front_end, tmp_path / "in", port, tmp_path)
    assert rc == 0, out
    for name in ("f0.dcm", "f1.dcm"):
        assert f"{name}: coerced by new-domain, accession-prefix, no-birth-date" in out, out
    for element, rule in [
        ("PatientID", "new-domain"),
        ("IssuerOfPatientID", "new-domain"),
        ("AccessionNumber", "accession-prefix"),
        ("PatientBirthDate", "no-birth-date"),
    ]:
        lines = [ln for ln in out.splitlines() if ln.strip().startswith(element + " ")]
        assert len(lines) == 2 and all(f"(rule {rule}, line" in ln for ln in lines), out
    assert "Sample: 2 coerced." in out, out
    leaked = [v for v in PHI if v in out]
    assert not leaked, f"values shown without --show-phi: {leaked}\n{out}"
    # Masked, but comparable within one output: both files get the same new issuer.
    lines = [ln for ln in out.splitlines() if "IssuerOfPatientID" in ln]
    issuers = {ln.split("->")[1].split("(rule")[0].strip() for ln in lines}
    assert len(issuers) == 1 and next(iter(issuers)).startswith("<6 chars #"), out
    assert nothing_reached(listener), "the destination was connected to"
    assert not (tmp_path / "state").exists(), "run created its state (a Redis, a job)"


@pytest.mark.parametrize("front_end", ["store", "run"])
def test_show_phi_and_json_give_the_values(
    front_end: str, listener: socket.socket, tmp_path: Path
) -> None:
    corpus(tmp_path / "in")
    write_rules(tmp_path / "rules", RULES, patients=TABLE)
    port = listener.getsockname()[1]
    extra = ("--show-phi", "--format", "json", "--sample", "1")
    rc, out = dry_run(front_end, tmp_path / "in", port, tmp_path, *extra)
    assert rc == 0, out
    doc = json.loads(out)
    coercion = doc["coercion"]
    assert (coercion["listed"], coercion["sampled"], coercion["masked"]) == (2, 1, False)
    [entry] = coercion["files"]
    changes = {c["element"]: (c["before"], c["after"], c["rule"]) for c in entry["changes"]}
    n = int(Path(entry["uri"]).name[1])
    assert changes == {
        "PatientID": (f"'PID-773{n + 1}'", f"'NEWPID-000{n + 1}'", "new-domain"),
        "IssuerOfPatientID": ("(absent)", "'HOSP-B'", "new-domain"),
        "AccessionNumber": (f"'ACC-4041{n + 1}'", f"'B-ACC-4041{n + 1}'", "accession-prefix"),
        "PatientBirthDate": ("'19671104'", "(deleted)", "no-birth-date"),
    }
    if front_end == "run":
        assert doc["inventory"]["listed"] == 2
    assert nothing_reached(listener)


@pytest.mark.parametrize("front_end", ["store", "run"])
def test_a_rule_that_fails_on_a_sampled_file_names_file_element_and_rule_exit_1(
    front_end: str, listener: socket.socket, tmp_path: Path
) -> None:
    corpus(tmp_path / "in", bad=True)
    write_rules(tmp_path / "rules", RULES, patients=TABLE)
    rc, out = dry_run(front_end, tmp_path / "in", listener.getsockname()[1], tmp_path)
    assert rc == 1, out
    missing = next(ln for ln in out.splitlines() if "g-missing.dcm" in ln)
    assert "WOULD FAIL: PatientID (rule new-domain, line 2)" in missing, missing
    assert "is not in the table" in missing and "missing: fail" in missing, missing
    long = next(ln for ln in out.splitlines() if "h-long.dcm" in ln)
    assert "WOULD FAIL: AccessionNumber (rule accession-prefix, line 6)" in long, long
    assert "too long for SH: 17 characters, at most 16" in long, long
    assert "Sample: 2 coerced, 2 failed." in out, out
    assert not [v for v in [*PHI, "PID-9999", "ACC-12345678901"] if v in out], out
    assert nothing_reached(listener)


def test_sample_options_without_dry_run_are_a_usage_error(tmp_path: Path) -> None:
    proc = run_migrator("store", tmp_path, "--host", "127.0.0.1", "--sample", "5")
    assert proc.returncode == 2
    assert "--sample: only with --dry-run" in proc.stderr


def test_the_sample_is_uniform_and_the_same_for_the_same_listing() -> None:
    class Listing:
        def __init__(self, n: int) -> None:
            self.n = n

        def iter_items(self) -> Iterator[SourceItem]:
            return (SourceItem(f"/f{i:04d}", 1) for i in range(self.n))

    first, listed, _ = reservoir([Listing(1000)], 20)  # type: ignore[list-item]
    again, _, _ = reservoir([Listing(1000)], 20)  # type: ignore[list-item]
    uris = [i.uri for _, i in first]
    assert listed == 1000 and uris == [i.uri for _, i in again] == sorted(uris)
    # Spread over the listing, not its head: a folder per patient is not one patient.
    assert int(uris[-1][2:]) - int(uris[0][2:]) > 500, uris


def test_masking_keeps_no_value_and_tells_equal_values_apart_from_others() -> None:
    mask = Masker(show_phi=False, key=b"k" * 16)
    a, b = mask("PatientID", "12345"), mask("PatientID", "12346")
    assert "12345" not in a and a.startswith("<5 chars #") and a != b
    assert mask("PatientID", "12345") == a
    assert mask("Modality", "CT") == "'CT'"  # the equipment's values are not the patient's
    assert mask("OtherPatientIDsSequence[*].PatientID", "9") != "'9'"
    # ...unless they came from the patient's (a copy of PatientName into Manufacturer)
    assert mask("Manufacturer", "Doe^J", read=("Manufacturer", "PatientName")) != "'Doe^J'"
    assert mask("Manufacturer", "ACME", read=("Manufacturer", "Modality")) == "'ACME'"
    assert Masker(show_phi=False)("PatientID", "12345") != a  # keyed anew by each command


#: Rules that write patient values into elements shown in clear (issue 18 review, P2)
INTO_CLEAR = """
rules:
  - name: name-as-maker
    copy: PatientName
    to: Manufacturer
  - name: maker-upper
    regex: Manufacturer
    pattern: '^Zeb'
    replacement: 'ZEB'
  - name: model-if-patient
    set: ManufacturerModelName
    value: Model-Z
    when: {PatientID: [PID-7731]}
  - name: conversion
    set: ConversionType
    value: WSD
"""


def test_a_patient_value_written_into_an_element_shown_in_clear_stays_masked(
    listener: socket.socket, tmp_path: Path
) -> None:
    """Manufacturer is shown in clear, but not a PatientName copied into it, nor what a
    later rule makes of that, nor a value written because of a PatientID: whether a value
    is masked follows where it came from, not only the element written."""
    dicom_file(
        tmp_path / "in" / "f.dcm",
        PatientID="PID-7731",
        PatientName="Zebulon^Quartermain",
        Manufacturer="ACME Imaging",
    )
    write_rules(tmp_path / "rules", INTO_CLEAR)
    port = listener.getsockname()[1]
    rc, out = dry_run("store", tmp_path / "in", port, tmp_path)
    assert rc == 0, out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if "(rule " in ln}
    assert not [v for v in ("Zebulon", "Quartermain", "ulon^Q") if v in out], out
    maker = [ln for ln in out.splitlines() if ln.strip().startswith("Manufacturer ")]
    assert len(maker) == 2, out  # the copy, then the regex on what it wrote
    copy, regex = maker
    # The copy's old value is the equipment's own (in clear); the new one is the name.
    assert "'ACME Imaging' -> <19 chars #" in copy and "(rule name-as-maker" in copy, out
    before, after = regex.split("(rule")[0].split("->")
    assert before.split(None, 1)[1].startswith("<19 chars #") and after.startswith(" <19 chars #")
    model = lines["ManufacturerModelName"]
    assert "Model-Z" not in model and "-> <7 chars #" in model, out  # says what PatientID was
    assert "-> 'WSD'" in lines["ConversionType"], out  # nothing of the patient: in clear
    rc, shown = dry_run("store", tmp_path / "in", port, tmp_path, "--show-phi")
    assert rc == 0 and "-> 'Zebulon^Quartermain'" in shown and "'ZEBulon^Quartermain'" in shown
    assert nothing_reached(listener)
