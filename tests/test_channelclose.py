"""A worker survives closing a broker channel whose transport is already detached.

The state Celery 5.7.0's consumer leaves on a lost broker connection (workers/channelclose.py):
``collect()`` detached the transport, the default channel is still open with an
unacknowledged message, and ``connection.close()`` closes it. Against a real Redis: without
the fix that close raises ``AttributeError: 'NoneType' object has no attribute 'hostname'``
(the worker's "Unrecoverable error"); with it, the close completes and the message stays in
Redis's unacked index, for the visibility-timeout sweep to restore.
"""

from __future__ import annotations

from kombu import Connection, Queue

from tests.peers.redis import RedisPeer, redis_peer
from workers import channelclose


def _detached_with_an_unacked_message(peer: RedisPeer) -> Connection:
    conn = Connection(peer.url)
    channel = conn.default_channel
    queue = Queue("q1", channel=channel)
    queue.declare()
    conn.Producer().publish({"batch": 1}, routing_key="q1")
    assert queue.get(no_ack=False) is not None  # delivered, not acknowledged
    channel._disconnect_pools()  # the pools of the lost connection
    conn._do_close_transport()  # how collect() ends: transport.client = None
    return conn


def test_closing_a_channel_after_collect_neither_raises_nor_loses_the_message() -> None:
    channelclose.install()
    with redis_peer() as peer:
        conn = _detached_with_an_unacked_message(peer)
        conn.close()  # raised AttributeError before workers/channelclose.py
        assert peer.client().hlen("unacked") == 1  # restorable, not lost


def test_install_is_idempotent() -> None:
    channelclose.install()
    patched = Connection.maybe_close_channel
    channelclose.install()
    assert Connection.maybe_close_channel is patched
