"""Write a bundle atomically: everything into a temporary folder, manifest last, then one rename to <version>/.

A crash or a failed check leaves no published version behind; a concurrent writer that took the version first
makes this one retry with the next number.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from contract import MANIFEST_FILE, Manifest, is_valid_name, list_versions

log = logging.getLogger(__name__)
_MAX_RENAME_TRIES = 10


def next_version(repository: Path, name: str) -> int:
    versions = list_versions(repository / name)
    return versions[-1] + 1 if versions else 1


def publish_bundle(repository: Path, name: str, build: Callable[[Path, int], Manifest]) -> tuple[Path, Manifest]:
    """build(tmp_dir, version) writes the graphs, checkpoint and report and returns the manifest; this function
    writes manifest.json last and renames the folder into place. Returns (bundle dir, manifest)."""
    if not is_valid_name(name):
        raise ValueError(f"model name {name!r} must match [a-z0-9][a-z0-9_-]{{0,63}}")
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        version = next_version(repository, name)
        manifest = build(tmp, version)
        for _ in range(_MAX_RENAME_TRIES):
            manifest = manifest.model_copy(update={"version": version})
            _write_text_atomic(tmp / MANIFEST_FILE, manifest.model_dump_json(indent=2))
            target = model_dir / str(version)
            try:
                os.rename(tmp, target)  # atomic on one file system; fails if target exists and is non-empty
                return target, manifest
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                log.warning("version %d of %s appeared meanwhile; trying the next", version, name)
                version = next_version(repository, name)
        raise RuntimeError(f"could not claim a version folder under {model_dir}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_text_atomic(path: Path, text: str) -> None:
    part = path.with_suffix(path.suffix + ".part")
    part.write_text(text)
    os.replace(part, path)
