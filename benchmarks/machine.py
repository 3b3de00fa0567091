"""The record every benchmark writes beside its figures: the machine they were measured on, the versions that ran,
and the commit (with a flag for product code that differed from it)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from runtime.cpus import usable_cpus

ROOT = Path(__file__).resolve().parents[1]
# the distributions behind the figures; those not installed here are left out
LIBRARIES = ("numpy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "scikit-learn", "fastapi", "uvicorn")
PRODUCT = ("contract", "runtime", "service", "training", "gaussian_vae")  # code whose edits the sha would not show


def machine_record(**extra: Any) -> dict[str, Any]:
    """Platform, host and usable CPUs, Python, library versions, git sha and whether the product code had uncommitted
    changes; then `extra`: what this script adds (the competing processes of a busy run, the GPU it ran on)."""
    changed = _git("status", "--porcelain", "--", *PRODUCT)
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),  # the affinity mask and cgroup quota: what a container was given
        "python": platform.python_version(),
        "versions": library_versions(),
        "git_sha": _git("rev-parse", "--short", "HEAD"),
        "product_code_uncommitted_changes": None if changed is None else bool(changed),
        **extra,
    }


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _git(*args: str) -> str | None:
    """git's answer in the repository this script belongs to; None where git or the repository is missing."""
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()
