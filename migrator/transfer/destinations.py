"""Where a Settings sends: the one place a Destination is chosen (DIMSE unless --dicomweb)."""

from __future__ import annotations

from migrator.settings import Settings
from migrator.transfer.destination import Destination


def make_destination(settings: Settings) -> Destination:
    if settings.dicomweb is not None:
        from migrator.transfer.stow import StowDestination  # urllib3: only when used

        return StowDestination(settings)
    from migrator.transfer.dimse import DimseDestination

    return DimseDestination(settings)
