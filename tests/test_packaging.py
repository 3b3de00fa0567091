"""Packaging promises of pyproject.toml: the service install never pulls torch; CPU machines pin the CPU build."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_serve_extra_and_base_dependencies_do_not_pull_torch() -> None:
    project = _project()
    assert "torch" not in _names(project["dependencies"])
    assert "torch" not in _names(project["optional-dependencies"]["serve"])
    assert {"fastapi", "uvicorn", "onnxruntime-gpu", "onnxruntime"} <= _names(project["optional-dependencies"]["serve"])


def test_onnxruntime_gpu_only_where_it_has_wheels() -> None:
    serve = _project()["optional-dependencies"]["serve"]
    gpu = next(r for r in serve if r.startswith("onnxruntime-gpu"))
    cpu = next(r for r in serve if r.startswith("onnxruntime>") or r.startswith("onnxruntime "))
    assert "platform_machine == 'x86_64'" in gpu and "platform_machine != 'x86_64'" in cpu


def test_cpu_constraints_pin_an_exact_torch_release() -> None:
    lines = [ln for ln in (ROOT / "constraints" / "cpu.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert any(re.fullmatch(r"torch==\d+\.\d+\.\d+", ln) for ln in lines)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == "make test"
    assert "`make test`" in (ROOT / "README.md").read_text()


def test_console_scripts_point_at_existing_functions() -> None:
    import importlib

    for target in _project()["scripts"].values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))


def test_the_wheel_carries_the_pages_and_the_grpc_proto_the_service_serves(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    (wheel,) = out.glob("*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    pages = {f"service/static/{p.name}" for p in (ROOT / "service" / "static").iterdir()}
    assert pages and pages <= inside, pages - inside
    protos = {f"service/protos/{p.name}" for p in (ROOT / "service" / "protos").iterdir()}  # the gRPC face's
    assert {"service/protos/open_inference.proto", "service/protos/open_inference.binpb"} <= protos <= inside
