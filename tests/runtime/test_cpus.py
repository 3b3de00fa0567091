"""usable_cpus(): the affinity mask capped by the cgroup CPU quota (v1 and v2, the tightest level wins)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import cpus


def _v2(tmp_path: Path, levels: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for path, cpu_max in levels.items():
        folder = root / path.strip("/")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cpu.max").write_text(cpu_max + "\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    return root, proc


def _v1(tmp_path: Path, quota: int, period: int = 100_000) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    folder = root / "cpu,cpuacct" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (folder / "cpu.cfs_period_us").write_text(f"{period}\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    return root, proc


@pytest.fixture
def eight_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))


def test_a_cgroup_v2_quota_caps_the_affinity_mask_rounding_up(tmp_path: Path, eight_cores: None) -> None:
    root, proc = _v2(tmp_path, {"/kubepods/pod1/ctr": "150000 100000"})
    assert cpus.cgroup_quota(root, proc) == 1.5
    assert cpus.usable_cpus(root, proc) == 2


def test_the_tightest_quota_on_the_path_to_the_root_wins(tmp_path: Path, eight_cores: None) -> None:
    root, proc = _v2(
        tmp_path, {"/": "max 100000", "/kubepods/pod1": "100000 100000", "/kubepods/pod1/ctr": "max 100000"}
    )
    assert cpus.usable_cpus(root, proc) == 1


def test_no_quota_leaves_the_affinity_mask(tmp_path: Path, eight_cores: None) -> None:
    root, proc = _v2(tmp_path, {"/kubepods/pod1/ctr": "max 100000"})
    assert cpus.cgroup_quota(root, proc) is None and cpus.usable_cpus(root, proc) == 8
    assert cpus.usable_cpus(tmp_path / "absent", tmp_path / "absent-too") == 8


def test_a_cgroup_v1_cfs_quota_is_read_from_the_cpu_controller(tmp_path: Path, eight_cores: None) -> None:
    root, proc = _v1(tmp_path, 300_000)
    assert cpus.usable_cpus(root, proc) == 3
    root, proc = _v1(tmp_path / "none", -1)
    assert cpus.usable_cpus(root, proc) == 8


def test_a_quota_below_one_cpu_still_gives_one_thread(tmp_path: Path, eight_cores: None) -> None:
    root, proc = _v2(tmp_path, {"/kubepods/pod1/ctr": "20000 100000"})
    assert cpus.usable_cpus(root, proc) == 1


def test_a_setting_overrides_and_auto_is_shared_among_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "usable_cpus", lambda: 8)
    assert cpus.threads(3) == 3 and cpus.threads(3, share=4) == 3
    assert cpus.threads(0) == 8 and cpus.threads(0, share=2) == 4 and cpus.threads(0, share=16) == 1


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is not installed")
def test_a_process_pinned_to_one_core_sizes_for_one() -> None:
    code = "from runtime import cpus; print(cpus.usable_cpus())"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
