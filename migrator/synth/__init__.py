"""Deterministic synthetic DICOM corpora for the demo, the benchmarks and the tests.

Everything here is a pure function of its arguments: the same seed gives the same UIDs, the same
pixels and the same bytes on disk, so benchmark runs and test failures reproduce. UIDs live under
the ``2.25`` root (PS3.5 §B.2: a UUID written as one decimal integer), derived with uuid5 from
the seed and the object's place in the corpus, so no organisational root is needed.

The package: :mod:`~migrator.synth.dataset` (one instance: ``make_dataset``,
``write_dataset``, ``derived_uid``), :mod:`~migrator.synth.corpora` (``write_corpus`` and the
test corpora) and :mod:`~migrator.synth.template` (the fast writer ``write_corpus`` uses).
"""

from __future__ import annotations

from migrator.synth.corpora import (
    SIZES,
    CorpusSize,
    many_contexts_sop_classes,
    write_corpus,
    write_many_contexts_corpus,
    write_mixed_corpus,
)
from migrator.synth.dataset import (
    KINDS,
    NATIVE_TRANSFER_SYNTAXES,
    derived_uid,
    make_dataset,
    write_dataset,
)

__all__ = [
    "KINDS",
    "NATIVE_TRANSFER_SYNTAXES",
    "SIZES",
    "CorpusSize",
    "derived_uid",
    "make_dataset",
    "many_contexts_sop_classes",
    "write_corpus",
    "write_dataset",
    "write_many_contexts_corpus",
    "write_mixed_corpus",
]
