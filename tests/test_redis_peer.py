"""The Redis test peer is the server we started, and survives a restart with AOF."""

from __future__ import annotations

from pathlib import Path

from tests.peers.redis import RedisPeer, redis_peer


def test_redis_peer_identity_and_restart_with_aof(tmp_path: Path) -> None:
    with redis_peer(tmp_path / "r", appendonly=True) as peer:
        client = peer.client()
        assert int(client.info("server")["process_id"]) == peer.pid
        client.set(b"k", b"v")
        old_pid = peer.pid
        peer.restart()
        assert peer.pid != old_pid
        assert peer.client().get(b"k") == b"v"


def test_redis_fixture_is_clean(redis_server: RedisPeer) -> None:
    assert redis_server.client().dbsize() == 0
