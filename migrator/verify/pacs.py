"""Opening an association to the PACS with pynetdicom, and saying why it could not be opened.

Shared by the C-FIND queries and the storage commitment: the same AE settings (timeouts,
TCP_NODELAY), and the same errors for a rejection, an unreachable PACS, or a PACS that
accepts none of the proposed SOP classes (``PacsQueryError``).
"""

from __future__ import annotations

from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association

from migrator.errors import AssociationRejected, ConnectError, PacsQueryError, rejected
from migrator.netutil import patch_pynetdicom_nodelay
from migrator.settings import Settings


def new_ae(config: Settings) -> AE:
    # Without TCP_NODELAY each request/response pair waits on Nagle + delayed ACK (40–90 ms).
    patch_pynetdicom_nodelay()
    ae = AE(ae_title=config.calling_ae)
    ae.acse_timeout = config.acse_timeout
    ae.dimse_timeout = config.dimse_timeout
    ae.network_timeout = config.network_timeout
    ae.connection_timeout = config.network_timeout
    return ae


def associate(ae: AE, config: Settings, **kwargs: Any) -> Association:
    assoc = ae.associate(config.host, config.port, ae_title=config.called_ae, **kwargs)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        result = int(getattr(rsp, "result", 1) or 1)
        source = int(getattr(rsp, "result_source", 0) or 0)
        reason = int(getattr(rsp, "diagnostic", 0) or 0)
        text = getattr(rsp, "reason_str", "") or "no reason given"
        raise AssociationRejected(
            f"{config.server} rejected the association: {text}",
            result=result,
            source=source,
            reason=reason,
        )
    if assoc.is_aborted and assoc.acceptor.primitive is not None:
        # Accepted, then aborted at once: pynetdicom does that when no context was accepted.
        raise PacsQueryError(f"{config.server} accepted none of the proposed SOP classes")
    _why_not_associated(config)
    raise ConnectError(f"cannot reach {config.server} (refused, unreachable or timed out)")


def _why_not_associated(config: Settings) -> None:
    """Ask again with our own upper layer, which reads a peer's A-ASSOCIATE-RJ even when the
    connection closes right behind it; pynetdicom 3.0.4 sometimes sees only the close (seen
    with Orthanc rejecting a wrong called AE) and reports no answer. Raises the rejection."""
    from migrator.dicomfile import IMPLICIT_LE
    from migrator.dul.association import Association as OwnAssociation
    from migrator.dul.dimse import VERIFICATION_SOP_CLASS
    from migrator.dul.pdu import ProposedContext

    try:
        probe = OwnAssociation.request(
            config.host,
            config.port,
            config.called_ae,
            config.calling_ae,
            [ProposedContext(1, VERIFICATION_SOP_CLASS, (IMPLICIT_LE,))],
            timeouts=config.timeouts,
        )
    except AssociationRejected as exc:
        raise rejected(config.server, exc) from None
    except ConnectError:
        return
    probe.release()
