"""Options that choose which studies a query-capable source lists (DICOMweb today; the
old PACS by C-FIND next): a StudyDate window, a modality, the server's result cap."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from migrator.commands.common import fail_config, opt
from migrator.errors import ConfigError

if TYPE_CHECKING:
    from migrator.sources.dicomweb import StudyQuery

F = TypeVar("F", bound=Callable[..., Any])


def study_query_options(func: F) -> F:
    for decorator in reversed(
        [
            opt(
                "--from",
                "date_from",
                env="FROM",
                default=None,
                metavar="DATE",
                help="dicomweb+ sources: only studies with a StudyDate on or after DATE "
                "(YYYY-MM-DD). Studies without a StudyDate are listed only when neither "
                "--from nor --to is given.",
            ),
            opt(
                "--to",
                "date_to",
                env="TO",
                default=None,
                metavar="DATE",
                help="dicomweb+ sources: only studies with a StudyDate on or before DATE.",
            ),
            opt(
                "--modality",
                env="MODALITY",
                default=None,
                help="dicomweb+ sources: only studies with this modality (ModalitiesInStudy).",
            ),
            opt(
                "--find-limit",
                env="FIND_LIMIT",
                type=click.IntRange(2),
                default=None,
                help="dicomweb+ sources: the most results the server returns for one query "
                "whatever the paging; a date window returning that many is split in two, "
                "down to one day, so that no study is missed.",
            ),
        ]
    ):
        func = decorator(func)
    return func


def study_query(o: dict[str, Any]) -> StudyQuery | None:
    """The StudyQuery the options give (None: every study); a usage error for bad dates."""
    from migrator.sources.dicomweb import StudyQuery, parse_date

    if not any(o.get(k) for k in ("date_from", "date_to", "modality", "find_limit")):
        return None
    try:
        return StudyQuery(
            date_from=parse_date(o["date_from"], "--from") if o.get("date_from") else None,
            date_to=parse_date(o["date_to"], "--to") if o.get("date_to") else None,
            modality=o.get("modality") or None,
            find_limit=o.get("find_limit"),
        )
    except ConfigError as exc:
        fail_config(str(exc))
        raise
