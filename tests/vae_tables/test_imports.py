"""vae_tables/ sits below training and the Python API: it imports none of them, nor torch; the package no pyarrow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
ABOVE = ("torch", "training", "runtime", "service", "gaussian_vae", "onnxruntime")


def _loaded(statement: str) -> str:
    code = f"{statement}; import sys; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({ABOVE!r})))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout


def test_every_module_of_tables_imports_nothing_above_it() -> None:
    modules = sorted(p.stem for p in (ROOT / "vae_tables").glob("*.py") if p.stem != "__init__")
    assert _loaded("; ".join(f"import vae_tables.{m}" for m in modules)).strip() == "[]"


def test_importing_tables_loads_no_pyarrow() -> None:
    code = "import sys, vae_tables, vae_tables.arrays, vae_tables.missing; print('pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "False"
