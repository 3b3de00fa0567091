"""How many CPUs this process may really use, to size thread pools (torch, onnxruntime, the service's workers).

os.cpu_count() is the host's count. A process pinned to some cores (taskset, a cpuset, Kubernetes' static CPU
manager) or held to a CPU quota (Docker --cpus, a Kubernetes CPU limit: the cgroup's CFS quota) that starts one
spinning thread per host core slows itself down many times over: threads wait for each other on cores they only
get a share of. usable_cpus() = min(cores in the affinity mask, ceil(quota / period) of the cgroup and each of
its parents), at least 1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota (v2 or v1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def threads(setting: int, share: int = 1) -> int:
    """A thread-count setting resolved: itself when positive, else (0 = auto) usable_cpus() split evenly among
    `share` processes started together (uvicorn workers, torchrun's local ranks), at least 1."""
    return setting if setting > 0 else max(1, usable_cpus() // max(1, share))


def cgroup_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its parents; None when there is none."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:  # cgroup v2: 0::/path
            quotas += _walk(cgroup_root, path, _v2_quota)
        elif "cpu" in controllers.split(","):  # cgroup v1: N:cpu,cpuacct:/path
            for mount in (cgroup_root / controllers, cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"):
                if mount.is_dir():
                    quotas += _walk(mount, path, _v1_quota)
                    break
    return min(quotas) if quotas else None


def _walk(mount: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    # the cgroup's own folder and each parent up to the mount (a container often sees only "/")
    found: list[float] = []
    parts = [p for p in path.strip("/").split("/") if p and p != ".."]
    for depth in range(len(parts), -1, -1):
        folder = mount.joinpath(*parts[:depth])
        quota = read(folder)
        if quota is not None:
            found.append(quota)
    return found


def _v2_quota(folder: Path) -> float | None:
    # cpu.max: "<quota> <period>" in microseconds, or "max <period>" for none
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" or int(period) <= 0 else int(quota) / int(period)


def _v1_quota(folder: Path) -> float | None:
    # cpu.cfs_quota_us is -1 for none
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
