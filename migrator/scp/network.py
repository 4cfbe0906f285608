"""Listening errors of `migrator scp` (the listener itself is ``migrator.dul.listener``)."""

from __future__ import annotations

from migrator.errors import MigratorError


class ListenError(MigratorError):
    """The receiver could not listen on the requested address and port."""


def listen_message(host: str, port: int, exc: OSError) -> str:
    import errno

    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: address already in use (another process has the port)"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: address not available on this host"
    return f"cannot listen on {where}: {exc.strerror or exc}"
