"""Passwords on our own command line are masked in place (``ps``, /proc/PID/cmdline).

``migrator run --redis-url redis://:SECRET@host/0`` showed SECRET to every user of the
machine for the whole run: /proc/PID/cmdline is world-readable. ``hide_secrets()``, called
first thing by the CLI, rewrites the process's own argument strings with every URL
password masked (``redis://:***@host/0``, ``?password=***``). The processes we start never
get a password in their arguments: workers and Flower get the Redis URL in their
environment, which only their user can read.

How: the kernel serves /proc/PID/cmdline from the process's argument area (``arg_start``
to ``arg_end`` in /proc/self/stat), and a process may write its own memory through
/proc/self/mem. The masked arguments are written there, NUL-separated as before, padded
with NULs (they are never longer: a longer one is cut). No dependency, ~0.1 ms, only when
the command line holds a password; nothing else changes (``sys.argv``, the environment
and /proc/PID/environ stay as they are). Linux only; elsewhere, or where /proc/self/mem
is not writable, the title stays as it was.

Not ``setproctitle``: with it installed, Celery retitles every worker process too, and
setproctitle's default moves the environment over the title, which empties
/proc/PID/environ of every worker (what tests use to find the processes of a run).

Limits: the command line is readable in the instant before it is rewritten (interpreter
start-up, ~0.1 s), and stays in the shell's history. Hence the advice in every ``--help``:
put the password in ``MIGRATOR_REDIS_URL``.
"""

from __future__ import annotations

import functools
import re
import sys

MASK = "***"


@functools.cache
def _patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Compiled on first use (~1 ms): a command line without '@' or '=' never needs them."""
    return (
        # ``scheme://user:password@`` (the user may be empty; the password may hold '@':
        # the user information ends at the last '@' before the path, as for urllib).
        re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/\s]*):[^\s/]*@"),
        re.compile(r"(?i)(?P<key>[?&](?:password|pass|pwd)=)[^&\s]*"),
    )


def mask(text: str) -> str:
    """``text`` with every URL password replaced by ``***``."""
    if "@" in text and "://" in text:
        text = _patterns()[0].sub(rf"\g<scheme>\g<user>:{MASK}@", text)
    if "=" in text:
        text = _patterns()[1].sub(rf"\g<key>{MASK}", text)
    return text


def masked_argv(argv: list[str]) -> list[str] | None:
    """``argv`` with passwords masked, or None when it holds none."""
    masked = [mask(arg) for arg in argv]
    return None if masked == argv else masked


def hide_secrets(argv: list[str] | None = None) -> bool:
    """Mask the passwords in this process's command line; True when one was masked.

    ``argv`` defaults to the interpreter's own command line (``sys.orig_argv``: what
    /proc/PID/cmdline shows, ``python -m migrator ...`` or ``.../bin/migrator ...``).
    """
    original = list(sys.orig_argv if argv is None else argv)
    masked = masked_argv(original)
    if masked is None or not sys.platform.startswith("linux"):
        return False
    try:
        return _write_arguments(masked)
    except (OSError, ValueError, IndexError):
        return False


def _write_arguments(args: list[str]) -> bool:
    with open("/proc/self/stat", "rb") as stat:
        # Fields after the command name (which may hold spaces and parentheses); field 48
        # is arg_start and 49 arg_end (Linux 3.5+), i.e. indexes 45 and 46 here.
        fields = stat.read().rsplit(b")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])
    size = end - start
    if size <= 0:
        return False
    data = b"\0".join(arg.encode(errors="surrogateescape") for arg in args) + b"\0"
    data = data[: size - 1] + b"\0" if len(data) > size else data.ljust(size, b"\0")
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(start)
        mem.write(data)
    return True
