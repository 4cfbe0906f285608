"""Files and rules for the coercion tests: a rules file and tables written to a folder, a
file coerced by the transform as a sender would, and what a receiver would read from it."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from migrator.coerce.coercer import Coercer
from migrator.coerce.rules import load_rules
from migrator.coerce.splice import spliced
from migrator.dicomfile import DicomHeader, inspect_file
from migrator.sources.base import Payload
from migrator.synth.dataset import make_dataset, write_dataset


def write_rules(folder: Path, yaml_text: str, **tables: str) -> Path:
    """``rules.yaml`` in ``folder`` and each table ``name=contents`` as ``name.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in tables.items():
        (folder / f"{name}.csv").write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    path = folder / "rules.yaml"
    path.write_text(textwrap.dedent(yaml_text).lstrip(), encoding="utf-8")
    return path


def dicom_file(path: Path, **elements: object) -> Path:
    """A small synthetic CT file with ``elements`` set (keyword=value; None deletes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = make_dataset("CT", rows=16, cols=16, seed=len(str(path)))
    for keyword, value in elements.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return write_dataset(ds, path)


def coerce(rules_path: Path, file: Path) -> tuple[DicomHeader, Payload]:
    """What a sender would send for ``file`` under the rules (raises CoercionError...)."""
    header = inspect_file(str(file))
    return Coercer(load_rules(str(rules_path)))(header, Payload(path=str(file)))


def received(header: DicomHeader, payload: Payload) -> Dataset:
    """The dataset as a receiver reads it: the spliced file parsed whole by pydicom."""
    if payload.head is None:
        return pydicom.dcmread(str(payload.path))
    data = spliced(header, payload)
    return pydicom.dcmread(io.BytesIO(data))
