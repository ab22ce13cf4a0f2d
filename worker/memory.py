"""What memory a worker's unit holds, and how much its worker may use before the out-of-memory
killer strikes: read by the heartbeat, so that a worker that went silent near its limit (most likely
OOM-killed, which no process survives to report) is not retried into the same death."""

from __future__ import annotations

import os
from pathlib import Path

from app.core.settings import host_memory_bytes

CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a page-rounded 2^63


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux); None where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _cgroup_limits(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> list[int]:
    """The memory limits of this process's cgroup (v2 memory.max, v1 memory.limit_in_bytes), in a
    container (where the process's cgroup is mounted at the root) or on a host."""
    places: list[Path] = []
    try:
        for line in proc_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":  # v2
                places += [root / path.lstrip("/") / "memory.max", root / "memory.max"]
            elif "memory" in controllers.split(","):
                places += [
                    root / "memory" / path.lstrip("/") / "memory.limit_in_bytes",
                    root / "memory" / "memory.limit_in_bytes",
                ]
    except (OSError, ValueError):
        pass
    limits = []
    for place in places:
        try:
            text = place.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < UNLIMITED:
            limits.append(int(text))
    return limits


def usable_bytes(configured: int | None = None) -> int | None:
    """What this worker may use: HTL_WORKER_MEMORY_BYTES when set, else the least of its cgroup's
    limit and the host's physical memory."""
    if configured is not None:
        return configured
    host = host_memory_bytes()
    known = [*_cgroup_limits(), *([host] if host else [])]
    return min(known) if known else None
