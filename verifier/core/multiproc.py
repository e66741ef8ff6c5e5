"""The metrics directory of one `railproof serve`: prometheus_client's multiprocess mode.

With several API processes each counts into its own files in PROMETHEUS_MULTIPROC_DIR and
/metrics sums them; without it every scrape would see only the process that answered. The
variable must be set before prometheus_client is first imported, so `serve` calls
`prepare_metrics_dir` before it builds anything.

- PROMETHEUS_MULTIPROC_DIR given: that directory is used (created if missing), and the value
  files a previous run left in it are removed first, so counts start from zero with the
  server (only prometheus_client's `*.db` files: nothing else there is touched).
- not given, `--workers` above 1: a fresh private directory, removed when `serve` exits.
- not given, one process: no directory; the process's own registry is the truth.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Read by prometheus_client when first imported: this module must not import it.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The files prometheus_client writes: counter_<pid>.db, gauge_<mode>_<pid>.db, histogram_….
_VALUE_FILES = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")


def clear_metrics_dir(path: Path) -> None:
    for pattern in _VALUE_FILES:
        for f in path.glob(pattern):
            f.unlink(missing_ok=True)


def prepare_metrics_dir(workers: int) -> Path | None:
    """Set up the directory for this server's processes; returns it, or None when one
    process keeps its metrics in memory."""
    given = os.environ.get(MULTIPROC_ENV, "").strip()
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        clear_metrics_dir(path)
        return path
    if workers <= 1:
        return None
    path = Path(tempfile.mkdtemp(prefix="railproof-metrics-"))
    # Children (uvicorn spawns them) inherit the environment.
    os.environ[MULTIPROC_ENV] = str(path)
    atexit.register(shutil.rmtree, path, True)
    return path
