"""Files someone named on the command line or in the environment.

Read (a cassette, a token file, an evidence file): a regular file only. `Path.read_bytes()` on
a named pipe waits for a writer that may never come, and on a device (/dev/zero, a terminal)
reads forever: the command hangs instead of saying what is wrong. The file is opened without
blocking and looked at before a byte is read.
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


def read_regular(path: str | Path) -> bytes:
    """The bytes of `path` (symbolic links followed), or OSError: FileNotFoundError and the
    like as `open` raises them, NotARegularFile for anything but a regular file."""
    p = Path(path)
    # O_NONBLOCK: opening a pipe with no writer returns at once instead of waiting for one.
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(p, _kind(mode))
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)
