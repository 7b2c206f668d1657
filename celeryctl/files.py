"""The one home for writing files: atomic, private, and never through a symbolic link.

Every file celeryctl writes goes through here: the settings file, the private node's files
(state, Erlang cookie, configuration), and the logs of programs it starts.

* :func:`write_file` writes a temporary file created with ``O_EXCL`` (``mkstemp``) in the
  target's directory, sets its mode with ``fchmod``, fsyncs it and renames it onto the target,
  so a reader sees the old file or the new one, never half of one.  A symbolic link at the
  target is refused: renaming over it would leave the file it points to alone, but whoever
  planted it expected celeryctl to write there, and a user who linked the file on purpose
  would silently lose the link.
* :func:`private_dir` makes a directory only its owner can enter (0700).
* :func:`open_log` opens a log file for writing with ``O_NOFOLLOW``, mode 0600.

An ``OSError`` becomes a typed error naming the path and what to do (never exit 70).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

from celeryctl.errors import CeleryctlError, ConfigError, PermissionDeniedError

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def _symlink_error(path: Path) -> PermissionDeniedError:
    try:
        points_to = f" (it points to {os.readlink(path)})"
    except OSError:
        points_to = ""
    return PermissionDeniedError(
        f"refusing to write {path}: it is a symbolic link{points_to}",
        f"celeryctl never writes through a link; remove it (rm {path}) or choose another path",
        details={"path": str(path)},
    )


def _os_error(path: Path, exc: OSError, doing: str) -> CeleryctlError:
    """The typed error for an OSError met while ``doing`` something with ``path``."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ELOOP:
        return _symlink_error(path)
    if exc.errno in _DENIED:
        return PermissionDeniedError(
            f"cannot {doing} {path}: {reason}",
            "check the owner and permissions of the file and its directory, or choose another path",
            details={"path": str(path)},
        )
    return ConfigError(
        f"cannot {doing} {path}: {reason}",
        "check that the directory exists and has room, or choose another path",
        details={"path": str(path)},
    )


def refuse_symlink(path: Path) -> None:
    """Raise the one-line refusal when ``path`` is a symbolic link (before reading what it points to)."""
    if Path(path).is_symlink():
        raise _symlink_error(Path(path))


def write_file(path: Path, data: bytes | str, *, mode: int = PRIVATE_FILE, sync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically with ``mode`` (default 0600); never follow a link.

    ``sync=False`` skips the fsync, for a file rewritten every second whose last version may be
    lost in a crash (a worker's health record): the rename alone keeps it whole.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    refuse_symlink(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _os_error(path, exc, "write") from None
    tmp = Path(tmp_name)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        refuse_symlink(path)  # planted while we wrote: still refuse
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _os_error(path, exc, "write") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def make_dir(path: Path) -> Path:
    """Create ``path`` and its parents if missing, with the usual permissions (a directory others
    may read: service files, a worker's health record); errors are one line, as for files."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(path, exc, "create the directory") from None
    return path


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if missing and make it 0700; refuse one that is not ours.

    A symbolic link is accepted only when both it and the directory it points to belong to
    the current user (a user may keep the data directory on another disk); a link or a
    directory owned by someone else, or a shared one (sticky bit, like /tmp), is refused.
    """
    path = Path(path)
    try:
        path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        link = path.lstat()
        target = path.stat()
    except OSError as exc:
        raise _os_error(path, exc, "create the directory") from None
    uid = os.geteuid()
    if not stat.S_ISDIR(target.st_mode):
        raise ConfigError(f"{path} is not a directory", "remove it or choose another path", details={"path": str(path)})
    if link.st_uid != uid or target.st_uid != uid:
        raise PermissionDeniedError(
            f"refusing to use {path}: it belongs to another user",
            "choose a directory of your own (--data-dir or CELERYCTL_DATA_DIR)",
            details={"path": str(path)},
        )
    if target.st_mode & stat.S_ISVTX:  # /tmp and the like: shared by design, never made private
        raise PermissionDeniedError(
            f"refusing to use {path}: it is a shared directory (sticky bit)",
            "choose a directory of your own, e.g. a new one inside it (--data-dir or CELERYCTL_DATA_DIR)",
            details={"path": str(path)},
        )
    if stat.S_IMODE(target.st_mode) != PRIVATE_DIR:
        try:
            os.chmod(path, PRIVATE_DIR)
        except OSError as exc:
            raise _os_error(path, exc, "restrict the permissions of") from None
    return path


def open_log(path: Path, *, append: bool = False, doing: str = "write the log") -> BinaryIO:
    """Open ``path`` for writing (truncated, or appended to with ``append``), mode 0600, refusing a
    symbolic link; the caller closes it.  ``doing`` names the act in errors ("cannot write the log ...")."""
    path = Path(path)
    start = os.O_APPEND if append else os.O_TRUNC
    flags = os.O_WRONLY | os.O_CREAT | start | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, PRIVATE_FILE)
    except OSError as exc:
        raise _os_error(path, exc, doing) from None
    try:
        os.fchmod(fd, PRIVATE_FILE)  # an existing log keeps its old mode otherwise
    except OSError as exc:
        os.close(fd)
        raise _os_error(path, exc, doing) from None
    return os.fdopen(fd, "wb")
