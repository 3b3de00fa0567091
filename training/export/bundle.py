"""Write a bundle atomically: everything into a temporary folder, manifest last, then one rename to <version>/.

A crash or a failed check leaves no published version behind; a concurrent writer that took the version first
makes this one retry with the next number. A publisher killed mid-export leaves its .tmp-<hex> folder behind; the
next publish of that model removes it (see _remove_if_stale for how a live publisher's folder is told apart).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from contract import MANIFEST_FILE, Manifest, is_valid_name, list_versions
from training.errors import TrainingError

log = logging.getLogger(__name__)
_MAX_RENAME_TRIES = 10
TMP_PREFIX = ".tmp-"
LOCK_FILE = ".lock"  # inside .tmp-<hex>/, flock-ed by its publisher for as long as the folder has that name
LEGACY_TMP_MAX_AGE_S = 3600.0  # a lockless .tmp-<hex> (older releases) unchanged for this long is abandoned


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
    remove_stale_temporaries(model_dir)
    tmp = model_dir / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    lock_fd = -1
    try:
        lock_fd = _create_held_lock(tmp)
        version = next_version(repository, name)
        manifest = build(tmp, version)
        # Keep the lock out of the published folder: unlink it while still holding the fd. Until the rename (ms
        # later) the folder is a lockless one changed just now, which cleaners leave alone for an hour.
        (tmp / LOCK_FILE).unlink()
        return _rename_into_place(tmp, manifest, version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)  # released only once tmp is renamed away or removed, so no cleaner can race the rename


def loadable(manifest: Manifest) -> Manifest:
    """The manifest, once its JSON is shown to load as every reader loads it; a value that does not (an infinite
    figure is written as null) fails the run before anything is published, instead of publishing a bundle that the
    service and vae-score refuse."""
    try:
        Manifest.model_validate_json(manifest.model_dump_json())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise TrainingError(
            f"the bundle's manifest would not load ({where}: {first['msg']}); "
            "nothing was published. An infinite figure usually means a feature on a scale beyond float32's range "
            "(about 3e38): rescale it or leave it out"
        ) from None
    return manifest


def _rename_into_place(tmp: Path, manifest: Manifest, version: int) -> tuple[Path, Manifest]:
    model_dir = tmp.parent
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
            log.warning("version %d of %s appeared meanwhile; trying the next", version, model_dir.name)
            version = next_version(model_dir.parent, model_dir.name)
    raise RuntimeError(f"could not claim a version folder under {model_dir}")


def _create_held_lock(tmp: Path) -> int:
    """tmp/.lock, exclusively flock-ed; returns the fd. The file is locked under a name no cleaner opens and only
    then renamed to .lock, so no cleaner ever finds a .lock that exists but is not yet locked."""
    part = tmp / f"{LOCK_FILE}.part"
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a fresh file nobody else has open: granted at once
        os.rename(part, tmp / LOCK_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_stale_temporaries(model_dir: Path, legacy_max_age_s: float = LEGACY_TMP_MAX_AGE_S) -> list[Path]:
    """Remove the .tmp-<hex> folders under model_dir that no live publisher owns; returns those removed."""
    # only names this module makes (.tmp- and a uuid4's 32 hex digits): a user's own .tmp-something stays
    ours = [tmp for tmp in sorted(model_dir.glob(f"{TMP_PREFIX}*")) if re.fullmatch(r"[0-9a-f]{32}", tmp.name[5:])]
    return [tmp for tmp in ours if _remove_if_stale(tmp, legacy_max_age_s)]


def _remove_if_stale(tmp: Path, legacy_max_age_s: float) -> bool:
    # A publisher holds flock(LOCK_EX) on tmp/.lock from just after mkdir until tmp is renamed away or removed, and
    # the kernel drops the lock when the process dies (any container on this host: flock lives in the shared kernel).
    # So: lock taken here -> its owner is dead, or it finished and tmp no longer exists (rmtree then finds nothing).
    # We keep the lock while removing, so a second cleaner sees it held and skips. No .lock at all -> a folder of an
    # older release, or a live publisher in the short gaps before .lock appears / after it is unlinked: only a
    # folder where nothing changed for legacy_max_age_s is taken as abandoned.
    if not tmp.is_dir() or tmp.is_symlink():
        return False
    try:
        fd = os.open(tmp / LOCK_FILE, os.O_RDWR)  # O_RDWR: flock over NFS is emulated with write locks
    except FileNotFoundError:
        age_s = time.time() - _newest_mtime(tmp)
        return age_s > legacy_max_age_s and _remove(tmp, f"no lock file and unchanged for {age_s / 60:.0f} min")
    except OSError as exc:
        log.warning("cannot check temporary folder %s (%s); leaving it", tmp, exc)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live publisher is writing it
    except OSError as exc:  # e.g. ENOLCK on a file system without locks: cleaning never fails a publish
        log.warning("cannot lock %s (%s); leaving it", tmp / LOCK_FILE, exc)
        return False
    else:
        return _remove(tmp, "its publisher is gone")
    finally:
        os.close(fd)


def _remove(tmp: Path, why: str) -> bool:
    try:
        shutil.rmtree(tmp)
    except FileNotFoundError:
        return False  # renamed into place or removed by another cleaner meanwhile
    except OSError as exc:
        log.warning("could not remove stale temporary folder %s: %s", tmp, exc)
        return False
    log.info("removed stale temporary folder %s (%s)", tmp, why)
    return True


def _newest_mtime(folder: Path) -> float:
    """Latest modification time of the folder or anything in it; now if it vanished meanwhile."""
    newest = 0.0
    for root, _, files in os.walk(folder):
        for path in (root, *(os.path.join(root, f) for f in files)):
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, os.lstat(path).st_mtime)
    return newest or time.time()


def _write_text_atomic(path: Path, text: str) -> None:
    part = path.with_suffix(path.suffix + ".part")
    part.write_text(text)
    os.replace(part, path)
