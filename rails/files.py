"""Files someone named on the command line or in the environment.

Read (a cassette, a token file, an evidence file): a regular file only. `Path.read_bytes()` on
a named pipe waits for a writer that may never come, and on a device (/dev/zero, a terminal)
reads forever: the command hangs instead of saying what is wrong. The file is opened without
blocking and looked at before a byte is read.

Written (a recorded cassette, a plot): `unwritable` says, before a long run, why its result
could not be saved there, rather than losing the run to an OSError at the end.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class NotARegularFile(OSError):
    """The path is a pipe, a socket, a device or a directory. `strerror` says so."""

    def __init__(self, path: Path, kind: str):
        super().__init__(errno.EINVAL, f"{kind}, not a regular file", str(path))


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


# Cassettes, payloads, tokens and evidence are kilobytes to a few megabytes; a file past this
# was named by mistake (a log, a disk image) and would be read into memory whole.
MAX_READ_BYTES = 256 << 20


class TooLarge(OSError):
    """The file is larger than MAX_READ_BYTES. `strerror` says so."""

    def __init__(self, path: Path, size: int):
        super().__init__(
            errno.EFBIG, f"{size} bytes, larger than {MAX_READ_BYTES >> 20} MiB", str(path)
        )


def read_regular(path: str | Path) -> bytes:
    """The bytes of `path` (symbolic links followed), or OSError: FileNotFoundError and the
    like as `open` raises them, NotARegularFile for anything but a regular file, TooLarge for
    one past MAX_READ_BYTES."""
    p = Path(path)
    # O_NONBLOCK: opening a pipe with no writer returns at once instead of waiting for one.
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(p, _kind(mode))
        size = os.fstat(fd).st_size
        if size > MAX_READ_BYTES:
            raise TooLarge(p, size)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def unwritable(path: str | Path, make_dirs: bool = False) -> str | None:
    """Why a file could not be written at `path`, or None. `make_dirs`: the writer creates the
    missing directories above it. A best guess made ahead: the write itself may still fail (a
    full disk)."""
    p = Path(path)
    if p.exists() and not p.is_file():
        return f"{p} is not a file (a directory?): name the file to write"
    parent = p.parent
    if make_dirs:  # the nearest directory that exists: the missing ones below it are made
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory" if parent.exists() else f"no directory {parent}"
    if p.exists():
        return None if os.access(p, os.W_OK) else f"{p}: permission denied"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"{parent}: permission denied"
