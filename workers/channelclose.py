"""A broker channel that cannot be closed for want of a connection is closed: no worker crash.

Celery 5.7.0's consumer, on losing the broker (a Redis restart), now closes the broken
connection itself (``Consumer.on_connection_error_after_connected``: ``connection.collect()``,
then ``ignore_errors(connection, connection.close)``). ``collect()`` has already detached the
transport from its connection (``transport.client = None``); if the default channel is
still open then, closing it restores its unacknowledged messages, which asks the transport
for a fresh Redis pool, whose parameters come from ``transport.client``: ``AttributeError:
'NoneType' object has no attribute 'hostname'``. kombu's ``maybe_close_channel`` ignores
only connection and channel errors, so the worker logs "Unrecoverable error" and exits
(seen in test_engine.py::test_redis_restart_mid_job on a loaded machine: both workers gone,
the job stalled at 120 of 300 files).

kombu already ignores ``AttributeError`` when it closes the connection itself
(``Connection._do_close_self``); closing a channel gets the same tolerance here. Nothing is
lost by it: the unacknowledged messages stay in Redis's unacked index and are restored by
the transport's visibility-timeout sweep, and our batches skip what is stored.
"""

from __future__ import annotations

from typing import Any

from kombu.connection import Connection

_PATCHED = "_migrator_tolerant_close"


def install() -> None:
    """Make ``Connection.maybe_close_channel`` also ignore AttributeError (idempotent)."""
    if getattr(Connection.maybe_close_channel, _PATCHED, False):
        return

    def maybe_close_channel(self: Connection, channel: Any) -> None:
        try:
            channel.close()
        except (*self.connection_errors, *self.channel_errors, AttributeError):
            pass

    setattr(maybe_close_channel, _PATCHED, True)
    Connection.maybe_close_channel = maybe_close_channel  # type: ignore[method-assign]
