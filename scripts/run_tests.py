"""The whole suite in N pytest processes at once (`make test`, TEST_JOBS=N, default 2).

Much of a test's time is spent waiting (on PostgreSQL, on a served process, on a lock
another thread holds), so two processes on two cores take about half the time of one. The
suite is made for it: each process migrates its own PostgreSQL template and its own SQLite
one, the tests' databases, Redis key prefixes and served ports are their own, and nothing
is shared between test files but the servers themselves.

The test files are dealt out by size, largest first, each to the process with the fewest
bytes so far (size is a fair proxy for a file's time). The first process writes to the
terminal as it goes; the others' output follows theirs. The exit status is 0 only when every
process passed. Arguments go to every process; arguments naming files or values (`-k expr`),
or TEST_JOBS=1, run one process over what they name, as pytest alone would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def deal(files: list[Path], jobs: int) -> list[list[Path]]:
    groups: list[list[Path]] = [[] for _ in range(jobs)]
    load = [0] * jobs
    for f in sorted(files, key=lambda f: (-f.stat().st_size, f.name)):
        i = load.index(min(load))
        groups[i].append(f)
        load[i] += f.stat().st_size
    return [sorted(g) for g in groups if g]


def _selects(arg: str) -> bool:
    """Whether an argument chooses what runs: a file or value (`tests/x.py`, the `expr` of
    `-k expr`), or a selection written in one (`-kexpr`, `-mslow`)."""
    return not arg.startswith("-") or (arg[:2] in ("-k", "-m") and len(arg) > 2)


def main(argv: list[str]) -> int:
    jobs = max(1, int(os.environ.get("TEST_JOBS", "2")))
    pytest = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *argv]
    if jobs == 1 or any(_selects(a) for a in argv):  # files or a -k: one process
        return subprocess.call(pytest)
    # Every test file pytest would collect from tests/, those in subfolders too.
    groups = deal(sorted(Path("tests").rglob("test_*.py")), jobs)
    logs = [tempfile.TemporaryFile() for _ in groups[1:]]
    procs = [subprocess.Popen([*pytest, *map(str, groups[0])])]
    procs += [
        subprocess.Popen([*pytest, *map(str, g)], stdout=log, stderr=subprocess.STDOUT)
        for g, log in zip(groups[1:], logs, strict=True)
    ]
    codes = [p.wait() for p in procs]
    for n, log in enumerate(logs, 2):
        log.seek(0)
        sys.stdout.write(f"\n---- test process {n} of {len(procs)} ----\n")
        sys.stdout.flush()
        sys.stdout.buffer.write(log.read())
    sys.stdout.write(f"\ntest processes' exit statuses: {codes}\n")
    # A process killed by a signal returns a negative code: a failure, whatever the others say.
    failed = [c for c in codes if c != 0]
    return max(failed) if failed and max(failed) > 0 else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
