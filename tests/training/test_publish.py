"""publish_bundle's temporary folders: a killed publisher's leftovers go on the next publish, a live one's stay."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract import Manifest
from training.export.bundle import LOCK_FILE, publish_bundle

HOUR_S = 3600.0


def _build(tmp: Path, version: int) -> Manifest:
    (tmp / "encoder.onnx").write_bytes(b"graph")
    return Manifest.model_construct(name="m", version=version)  # publish_bundle only copies and dumps it


def _tmp(tag: str) -> str:
    # a publisher's folder name: .tmp- and a uuid4's 32 hex digits (here a stable one per tag)
    return ".tmp-" + hashlib.md5(tag.encode()).hexdigest()


def _leftover(model_dir: Path, name: str, *, lock: bool, age_s: float = 0.0) -> Path:
    folder = model_dir / name
    folder.mkdir(parents=True)
    (folder / "encoder.onnx").write_bytes(b"partial")
    if lock:
        (folder / LOCK_FILE).touch()  # as a killed publisher leaves it: the file is there, nobody holds the flock
    if age_s:
        then = time.time() - age_s
        for path in (*folder.iterdir(), folder):
            os.utime(path, (then, then))
    return folder


def _lock_is_held(lock: Path) -> bool:
    fd = os.open(lock, os.O_RDWR)  # a second open file description: flock conflicts even within one process
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.fixture
def held_elsewhere(tmp_path: Path) -> Iterator[Path]:
    """A .tmp folder whose lock another live process holds, as a concurrent publisher in another container would."""
    folder = _leftover(tmp_path / "m", _tmp("live"), lock=True, age_s=2 * HOUR_S)
    code = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('locked', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder / LOCK_FILE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield folder
    finally:
        holder.communicate(timeout=10)  # closing stdin ends it


def test_a_killed_publishers_folder_is_removed_on_the_next_publish(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = _leftover(tmp_path / "m", _tmp("dead"), lock=True)
    with caplog.at_level(logging.INFO, logger="training.export.bundle"):
        bundle, _ = publish_bundle(tmp_path, "m", _build)
    assert not dead.exists() and sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]
    assert any("removed stale temporary folder" in r.message and _tmp("dead") in r.message for r in caplog.records)


def test_the_folder_of_a_publisher_killed_by_sigkill_is_removed_on_the_next_publish(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from training.export.bundle import publish_bundle\n"
        "def build(tmp, version):\n"
        "    (tmp / 'encoder.onnx').write_bytes(b'partial'); print('building', flush=True); time.sleep(600)\n"
        "publish_bundle(Path(sys.argv[1]), 'm', build)\n"
    )
    publisher = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert publisher.stdout is not None and publisher.stdout.readline().strip() == "building"
    publisher.send_signal(signal.SIGKILL)
    publisher.wait(timeout=10)
    publisher.stdout.close()
    assert [p.name.startswith(".tmp-") for p in (tmp_path / "m").iterdir()] == [True]
    publish_bundle(tmp_path, "m", _build)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_a_folder_whose_lock_another_live_process_holds_is_kept(tmp_path: Path, held_elsewhere: Path) -> None:
    publish_bundle(tmp_path, "m", _build)
    assert (held_elsewhere / "encoder.onnx").read_bytes() == b"partial"
    assert (tmp_path / "m" / "1").is_dir()


def test_a_publish_during_another_publish_leaves_the_others_folder_alone(tmp_path: Path) -> None:
    seen: list[Path] = []

    def outer_build(tmp: Path, version: int) -> Manifest:
        seen.append(tmp)
        (tmp / "encoder.onnx").write_bytes(b"outer")
        publish_bundle(tmp_path, "m", _build)  # cleans up first, then takes version 1, so this one retries with 2
        assert (tmp / "encoder.onnx").read_bytes() == b"outer"
        return Manifest.model_construct(name="m", version=version)

    bundle, manifest = publish_bundle(tmp_path, "m", outer_build)
    assert bundle.name == "2" and manifest.version == 2 and (bundle / "encoder.onnx").read_bytes() == b"outer"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"] and not seen[0].exists()


def test_an_old_lockless_folder_is_removed_and_a_fresh_one_is_kept(tmp_path: Path) -> None:
    old = _leftover(tmp_path / "m", _tmp("old"), lock=False, age_s=2 * HOUR_S)
    fresh = _leftover(tmp_path / "m", _tmp("fresh"), lock=False, age_s=HOUR_S / 2)
    publish_bundle(tmp_path, "m", _build)
    assert not old.exists() and fresh.is_dir()


def test_a_users_own_tmp_folder_is_never_taken_for_a_publishers(tmp_path: Path) -> None:
    mine = _leftover(tmp_path / "m", ".tmp-notes", lock=True, age_s=2 * HOUR_S)  # old, lock unheld: not ours
    publish_bundle(tmp_path, "m", _build)
    assert mine.is_dir()


def test_a_lockless_folder_with_a_recently_written_file_is_kept(tmp_path: Path) -> None:
    folder = _leftover(tmp_path / "m", _tmp("writing"), lock=False, age_s=2 * HOUR_S)
    (folder / "encoder.onnx").write_bytes(b"still being written by an older release")
    publish_bundle(tmp_path, "m", _build)
    assert folder.is_dir()


def test_the_published_version_never_contains_the_lock_file(tmp_path: Path) -> None:
    locked_during_build: list[bool] = []

    def build(tmp: Path, version: int) -> Manifest:
        locked_during_build.append(_lock_is_held(tmp / LOCK_FILE))
        return _build(tmp, version)

    bundle, _ = publish_bundle(tmp_path, "m", build)
    assert locked_during_build == [True]
    assert sorted(p.name for p in bundle.iterdir()) == ["encoder.onnx", "manifest.json"]


def test_a_failed_build_removes_its_folder_and_lock(tmp_path: Path) -> None:
    def build(tmp: Path, version: int) -> Manifest:
        (tmp / "encoder.onnx").write_bytes(b"partial")
        raise RuntimeError("parity failed")

    with pytest.raises(RuntimeError, match="parity failed"):
        publish_bundle(tmp_path, "m", build)
    assert list((tmp_path / "m").iterdir()) == []
