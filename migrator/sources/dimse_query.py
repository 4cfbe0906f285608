"""The old PACS's listing queries (Study Root C-FIND) on our own upper layer.

``ListingClient`` answers ``find(level, keys, returned, cut=)`` as
``migrator.verify.query.QueryClient`` does, for the few attributes a listing asks about,
each match a ``Match`` (its values as text, by keyword). Listing 300 studies is 301
C-FINDs and ~3,000 matches: through pynetdicom and pydicom each cost ~6 ms of CPU in the
planning process, most of what planning from an old PACS cost; here a match is a few
``struct`` reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from migrator.dicomfile import EXPLICIT_LE, IMPLICIT_LE
from migrator.dul.pdu import ProposedContext
from migrator.dul.retrieving import RetrievingAssociation, decode_identifier
from migrator.errors import (
    AssociationLost,
    AssociationRejected,
    ConnectError,
    PacsQueryError,
    rejected,
)
from migrator.settings import Settings
from migrator.status import fmt, meaning

#: Study Root C-FIND
FIND = "1.2.840.10008.5.1.4.1.2.2.1"

#: keyword -> (tag, VR): the attributes a listing sends or asks for
KEYWORDS: dict[str, tuple[int, bytes]] = {
    "QueryRetrieveLevel": (0x00080052, b"CS"),
    "SOPClassUID": (0x00080016, b"UI"),
    "SOPInstanceUID": (0x00080018, b"UI"),
    "StudyDate": (0x00080020, b"DA"),
    "ModalitiesInStudy": (0x00080061, b"CS"),
    "Modality": (0x00080060, b"CS"),
    "StudyInstanceUID": (0x0020000D, b"UI"),
    "SeriesInstanceUID": (0x0020000E, b"UI"),
    "NumberOfStudyRelatedInstances": (0x00201208, b"IS"),
    "NumberOfSeriesRelatedInstances": (0x00201209, b"IS"),
}
_BY_TAG = {tag: keyword for keyword, (tag, _) in KEYWORDS.items()}


class Match(dict[str, str]):
    """One C-FIND match: {keyword: text}, also read as attributes (``m.StudyInstanceUID``)."""

    def __getattr__(self, name: str) -> str:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def source_association(
    config: Settings,
    contexts: list[ProposedContext],
    roles: Sequence[tuple[str, bool, bool]] = (),
) -> RetrievingAssociation:
    """An association to the old PACS ``config`` names (its host, AE titles, maximum PDU
    and timeouts), for its queries and retrieves."""
    return RetrievingAssociation.request(
        config.host,
        config.port,
        config.called_ae,
        config.calling_ae,
        contexts,
        max_pdu=config.max_pdu,
        timeouts=config.timeouts,
        roles=roles,
    )


class ListingClient:
    """Study Root C-FIND on one association (a context manager)."""

    name = "C-FIND"

    def __init__(self, config: Settings) -> None:
        self.config = config
        contexts = [ProposedContext(1, FIND, (IMPLICIT_LE, EXPLICIT_LE))]  # as pynetdicom
        try:
            self._assoc = source_association(config, contexts)
        except AssociationRejected as exc:
            raise rejected(config.server, exc) from None
        if self._assoc.context_of(FIND) is None:
            self._assoc.release()
            raise PacsQueryError(f"{config.server} accepted none of the proposed SOP classes")
        self.queries = 0

    def __enter__(self) -> ListingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._assoc.release()

    def find(
        self,
        level: str,
        keys: Mapping[str, str],
        returned: Iterable[str],
        *,
        cut: list[bool] | None = None,
    ) -> list[Match]:
        """The matches. ``cut``: a list the answer's "cut short" flag is appended to (a
        final 0xFE00 Cancel after matches: Orthanc's ``LimitFindResults`` answers so);
        without it, that answer is an error like any other failure status."""
        elements = [(*KEYWORDS["QueryRetrieveLevel"], level)]
        elements += [(*KEYWORDS[name], value) for name, value in keys.items()]
        elements += [(*KEYWORDS[name], "") for name in returned if name not in keys]
        found = self._assoc.context_of(FIND)
        syntax = found[1] if found else IMPLICIT_LE
        self.queries += 1
        matches: list[Match] = []
        try:
            for answer in self._assoc.c_find(FIND, elements):
                code = answer.status
                if code in (0xFF00, 0xFF01):  # pending: one match each
                    if answer.identifier:
                        matches.append(_match(decode_identifier(answer.identifier, syntax)))
                elif code == 0xFE00 and cut is not None:
                    cut.append(True)
                elif code != 0x0000:
                    raise PacsQueryError(
                        f"C-FIND at {level} level failed: {fmt(code)} {meaning(code)}"
                    )
        except AssociationLost as exc:
            raise ConnectError(
                f"no C-FIND response from {self.config.server} ({exc}; does it allow C-FIND "
                f"from AE {self.config.calling_ae}?)"
            ) from None
        return matches


def _match(values: dict[int, str]) -> Match:
    return Match({_BY_TAG[tag]: text for tag, text in values.items() if tag in _BY_TAG})


__all__ = ["KEYWORDS", "ListingClient", "Match", "source_association"]
