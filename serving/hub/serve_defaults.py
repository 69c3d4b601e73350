"""How many gunicorn workers and paddle threads ``shitu serve`` uses when it is not told: a rule keyed by cores.

The rule, from ``benchmarks/bench_serving.py`` (workers x paddle threads on one machine, timed interleaved; see
README "Serving"): a worker's forward gets ~1.7x faster from its second paddle thread (lower latency for every
request) but not much from more, and a second worker only pays where it has cores of its own to use. So:

- **threads per worker** = ``min(2, cores)`` (:data:`MAX_THREADS_PER_WORKER`);
- **workers** = ``max(1, cores // threads)``: 1 core -> 1 x 1, 2 cores -> 1 x 2, 4 cores -> 2 x 2, 16 -> 8 x 2.

An explicit ``--workers`` or ``--threads`` wins; the other one is derived so that workers x threads fits the cores
(``--workers 2`` on 2 cores -> 1 thread each; ``--threads 1`` on 2 cores -> 2 workers). "Cores" are the ones this
process may run on (``os.sched_getaffinity``: ``taskset``, a container's cpuset; else ``os.cpu_count()``), fewer
where a CPU quota allows less (``docker --cpus``, a Kubernetes CPU limit: the container's ``cpu.max`` in cgroup v2,
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in v1), rounded up.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAX_THREADS_PER_WORKER", "ServeDefaults", "cpu_quota", "serve_defaults", "usable_cores"]

#: Paddle threads per worker beyond which the rule adds workers instead (measured: the second thread pays ~1.7x).
MAX_THREADS_PER_WORKER = 2


@dataclass(frozen=True)
class ServeDefaults:
    """Workers and paddle threads per worker (``Global.cpu_num_threads``) for ``hub serving``."""

    workers: int
    threads: int


def cpu_quota(cgroup: Path = Path("/sys/fs/cgroup")) -> float | None:
    """Cores' worth of CPU time the cgroup quota allows (None: no quota, or none readable)."""
    for quota_file, period_file in (
        (cgroup / "cpu.max", None),
        (cgroup / "cpu" / "cpu.cfs_quota_us", cgroup / "cpu" / "cpu.cfs_period_us"),
    ):
        try:
            words = quota_file.read_text().split()[:2]
            if period_file is not None:
                words.append(period_file.read_text().strip())
            quota, period = float(words[0]), float(words[1])
        except (OSError, ValueError, IndexError):  # absent, "max" (no quota), or unreadable
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may run on (affinity mask where the platform has one), capped by a CPU quota; >= 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def serve_defaults(cores: int, workers: int | None = None, threads: int | None = None) -> ServeDefaults:
    """The rule above for ``cores``; a given ``workers`` / ``threads`` (>= 1) is kept as it is."""
    if cores < 1 or (workers is not None and workers < 1) or (threads is not None and threads < 1):
        raise ValueError(f"cores, workers and threads must be >= 1 (got {cores}, {workers}, {threads})")
    if threads is None:
        share = cores // workers if workers is not None else cores
        threads = max(1, min(MAX_THREADS_PER_WORKER, share))
    if workers is None:
        workers = max(1, cores // threads)
    return ServeDefaults(workers, threads)
