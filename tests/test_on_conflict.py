"""``--on-conflict`` (issue 18): three files with one SOP Instance UID into a real Orthanc,
through both front ends. The first copy is broken (a SOP class Orthanc does not accept: it
fails at the PACS), the second is good, the third has other content.

* ``fail`` (the default): the good copy is sent in the broken one's place and stored; the
  third, different from what is stored, fails as a conflict.
* ``first-good``: the same, but the third is skipped: the instance is at the PACS.
* ``skip``: only the first version is ever offered: the good copy, which differs from the
  broken one, is skipped instead of being sent in its place, and so is the third.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from migrator.synth.dataset import make_dataset, write_dataset
from tests.behaviourhelpers import FRONT_ENDS, Problems, send
from tests.peers.orthanc import OrthancPeer

UID = "1.2.826.0.1.3680043.10.543.18.1"
EXPECTED = {
    "fail": ("failed", "stored", "failed"),
    "first-good": ("failed", "stored", "skipped"),
    "skip": ("failed", "skipped", "skipped"),
}


def three_copies(folder: Path) -> None:
    folder.mkdir()
    broken = make_dataset("CT", rows=16, cols=16, sop_uid=UID, seed=1)
    broken.SOPClassUID = broken.file_meta.MediaStorageSOPClassUID = "1.2.3.4.5.6.7"
    write_dataset(broken, folder / "a-broken.dcm")
    write_dataset(make_dataset("CT", rows=16, cols=16, sop_uid=UID, seed=1), folder / "b-good.dcm")
    other = make_dataset("CT", rows=16, cols=16, sop_uid=UID, seed=1)
    other.InstitutionName = "Another version"
    write_dataset(other, folder / "c-other.dcm")


@pytest.mark.parametrize("policy", list(EXPECTED))
@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_three_copies_of_one_instance_under_each_policy(
    front_end: str, policy: str, orthanc: OrthancPeer, tmp_path: Path
) -> None:
    three_copies(tmp_path / "in")
    result = send(
        front_end,
        tmp_path / "in",
        orthanc.dicom_port,
        "ORTHANC",
        tmp_path,
        "--on-conflict",
        policy,
    )
    p = Problems()
    files = result.files()
    got = tuple(files[n]["state"] for n in ("a-broken.dcm", "b-good.dcm", "c-other.dcm"))
    p.check(got == EXPECTED[policy], f"states {got}, expected {EXPECTED[policy]}")
    p.check(result.rc == 1, f"exit {result.rc} (the broken copy failed)")
    held = orthanc.all_sop_instance_uids()
    stored = EXPECTED[policy][1] == "stored"
    p.check(held == ({UID} if stored else set()), f"Orthanc holds {held}")
    if stored:
        oid = orthanc.find_instance(UID)
        tags = orthanc.simplified_tags(oid) if oid else {}
        p.check(tags.get("InstitutionName") != "Another version", "the other version arrived")
    third = files["c-other.dcm"]["reason"]
    p.check("conflict: SOP Instance UID" in third, f"third: {third!r}")
    if policy != "fail":
        p.check(f"--on-conflict {policy}" in third, f"third: {third!r}")
    if policy == "skip":
        second = files["b-good.dcm"]["reason"]
        p.check("a-broken.dcm" in second and "not stored" in second, f"second: {second!r}")
    p.done(result)
