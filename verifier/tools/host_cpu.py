"""What the host's CPUs did while a benchmark ran, from Linux's /proc/stat.

A figure from a shared virtual machine means little without it: time the hypervisor gave to
other guests (`steal`) is time none of the benchmark's processes could run, and it varies
from minute to minute, so the same code measures at half its rate on a busy host
(docs/bench.md, "Reading the figures"). `railproof bench` reports, over its whole run:

    host_cpus            CPUs the kernel counts
    host_cpu_steal_pct   share of CPU time taken by the hypervisor for other guests
    host_cpu_idle_pct    share of CPU time nothing ran (idle and waiting for I/O)

Elsewhere than Linux the file is missing and nothing is reported.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STAT = Path("/proc/stat")
# The aggregate "cpu" line's fields, in the kernel's order (proc(5)); guest time is already
# counted in user and nice, so it is left out of the total.
FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def parse(text: str) -> dict[str, int] | None:
    """The aggregate CPU counters (clock ticks) of one /proc/stat snapshot."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            values = [int(v) for v in parts[1 : 1 + len(FIELDS)]]
            values += [0] * (len(FIELDS) - len(values))  # old kernels lack steal
            return dict(zip(FIELDS, values, strict=True))
    return None


def shares(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Steal and idle as percentages of all CPU time between two snapshots."""
    delta = {k: after[k] - before[k] for k in FIELDS}
    total = sum(delta.values())
    if total <= 0:
        return {"host_cpu_steal_pct": 0.0, "host_cpu_idle_pct": 0.0}
    return {
        "host_cpu_steal_pct": round(100 * delta["steal"] / total, 1),
        "host_cpu_idle_pct": round(100 * (delta["idle"] + delta["iowait"]) / total, 1),
    }


def _snapshot() -> dict[str, int] | None:
    try:
        return parse(STAT.read_text())
    except OSError:
        return None


@contextmanager
def watched() -> Iterator[dict[str, Any]]:
    """Yields a dict filled, when the block ends, with the host's CPU figures for it."""
    out: dict[str, Any] = {}
    before = _snapshot()
    try:
        yield out
    finally:
        after = _snapshot()
        if before is not None and after is not None:
            out["host_cpus"] = os.cpu_count()
            out.update(shares(before, after))
