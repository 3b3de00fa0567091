"""The live repository follows the disk and the requests made to it: a version or model whose folder is gone stops
serving, a version replaced in place or a refused one re-published is verified again, a poll that waited for the lock
never undoes the request before it, a load without a version serves the newest on disk, the default model stays the
one first chosen, and a version's monitoring follows the bundle it watches."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from service import repository as repository_module
from service.app import create_app
from service.errors import BundleRefused
from service.metrics import Metrics
from service.monitoring import Monitoring
from service.peers import Peers
from service.repository import ModelRepository
from service.settings import ServiceSettings
from tests.service.conftest import serving
from tests.service.test_live_repository import ROW, publish

pytestmark = pytest.mark.anyio
NAME = "digits-diag"


@asynccontextmanager
async def opened(repo: Path, peers: Peers | None = None, **settings: Any) -> AsyncIterator[ModelRepository]:
    """A started repository of `repo` (no poll: the tests call refresh() as a poll would)."""
    s = ServiceSettings(model_repository=repo, **settings)
    repository = ModelRepository(s, Metrics(), peers, Monitoring(s))
    await repository.start()
    try:
        yield repository
    finally:
        await repository.stop()


def serving_version(repository: ModelRepository, name: str = NAME) -> int | None:
    runner = repository.get(name)
    return None if runner is None else runner.model.manifest.version


def replace_in_place(repo: Path, name: str, version: int, source: str) -> None:
    """<name>/<version> replaced by another bundle (source's version 1) under the same name and number."""
    staging = repo / name / f".tmp-{version}"
    shutil.copytree(repo / source / "1", staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest.update(name=name, version=version)
    (staging / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(repo / name / str(version))
    staging.rename(repo / name / str(version))


async def poll_behind(repository: ModelRepository, request: Coroutine[Any, Any, Any]) -> None:
    """A poll that looks while `request` waits for the repository's lock (held by a request already running, another
    model's load, say), then waits behind it; both run to their end."""
    async with repository._lock:
        asked = asyncio.create_task(request)
        await asyncio.sleep(0.01)
        poll = asyncio.create_task(repository.refresh())
        await asyncio.sleep(0.01)
    await asked
    await poll


@pytest.mark.parametrize("request_kind", ["unload", "pin"])
async def test_a_poll_that_waited_behind_an_unload_or_a_pin_does_not_undo_it(repo: Path, request_kind: str) -> None:
    async with opened(repo) as repository:
        publish(repo, NAME, 2)  # a poll finds it, then waits for the lock behind the request
        tried: list[str] = []
        load = repository._load

        async def spied(name: str, version: int | None, mode: Any) -> Any:
            runner = await load(name, version, mode)
            tried.append(f"{mode} {'skipped' if runner is None else 'applied'}")
            return runner

        repository._load = spied  # type: ignore[method-assign]
        request = repository.unload(NAME) if request_kind == "unload" else repository.load(NAME, 1)
        await poll_behind(repository, request)
        assert "poll skipped" in tried  # the poll did try, after the request, and left it standing
        if request_kind == "unload":
            assert serving_version(repository) is None and NAME in repository.unloaded
        else:
            assert serving_version(repository) == 1 and repository.pinned == {NAME: 1}


async def test_a_version_deleted_while_the_poll_runs_does_not_end_the_poll(repo: Path) -> None:
    publish(repo, NAME, 2)
    async with opened(repo, poll_interval_s=0.05) as repository:
        publish(repo, NAME, 3)
        load = repository._load

        async def deleted_meanwhile(name: str, version: int | None, mode: Any) -> Any:
            if mode == "poll" and version == 3 and (repo / NAME / "3").exists():
                shutil.rmtree(repo / NAME / "3")  # gone between the poll's scan and its load
            return await load(name, version, mode)

        repository._load = deleted_meanwhile  # type: ignore[method-assign]
        await asyncio.sleep(0.3)
        publish(repo, NAME, 4)
        for _ in range(100):
            if serving_version(repository) == 4:
                break
            await asyncio.sleep(0.05)
        assert serving_version(repository) == 4 and not any(t.done() for t in repository._tasks)


async def test_a_load_without_a_version_serves_the_newest_on_disk_even_after_the_newer_one_was_deleted(
    repo: Path,
) -> None:
    publish(repo, NAME, 2)
    async with opened(repo) as repository:
        assert serving_version(repository) == 2
        shutil.rmtree(repo / NAME / "2")  # the bad version deleted, then a load to roll back
        runner = await repository.load(NAME)
        assert runner.model.manifest.version == serving_version(repository) == 1
        assert sorted(repository.loaded[NAME]) == [1]


async def test_the_poll_follows_deleted_versions_and_models_and_serves_them_again_when_they_return(
    repo: Path,
) -> None:
    publish(repo, NAME, 2)
    async with opened(repo, keep_versions=2) as repository:
        await repository.load(NAME, 1)
        await repository.load(NAME, 2)  # pinned: a pin on a version whose folder goes is dropped
        assert serving_version(repository) == 2 and sorted(repository.loaded[NAME]) == [1, 2]
        publish(repo, NAME, 3)
        await repository.load(NAME)  # 3 serves, 2 is kept loaded (addressable by version)
        assert sorted(repository.loaded[NAME]) == [2, 3]
        shutil.rmtree(repo / NAME / "3")
        shutil.copytree(repo / NAME / "2", repo.parent / "two")
        shutil.rmtree(repo / NAME / "2")  # a kept version's folder goes too: it is let go as well
        await repository.refresh()  # the serving version gone at one poll (perhaps being replaced): it serves on
        assert serving_version(repository) == 3 and sorted(repository.loaded[NAME]) == [3]
        await repository.refresh()  # gone at the next too: the newest left serves
        assert serving_version(repository) == 1 and sorted(repository.loaded[NAME]) == [1]
        (repo.parent / "two").rename(repo / NAME / "2")
        await repository.refresh()
        assert serving_version(repository) == 2
        await repository.load(NAME, 2)
        shutil.rmtree(repo / NAME / "2")
        await repository.refresh()  # gone at one poll: perhaps being replaced (rm, then mv), so the pin stands
        assert serving_version(repository) == 2 and repository.pinned == {NAME: 2}
        await repository.refresh()  # gone at the next too: dropped
        assert serving_version(repository) == 1 and repository.pinned == {}
        assert sorted(repository.loaded[NAME]) == [1]
        moved = repo.parent / "elsewhere"
        (repo / NAME).rename(moved)  # the whole model taken away: it stops serving, not "unloaded"
        await repository.refresh()  # gone at one poll: perhaps being replaced (rm, then mv), so it serves on
        assert serving_version(repository) == 1
        await repository.refresh()
        assert repository.get(NAME) is None and NAME not in repository.loaded and NAME not in repository.unloaded
        assert repository.get("digits-full") is not None
        moved.rename(repo / NAME)
        await repository.refresh()
        assert serving_version(repository) == 1
        away = repo.parent / "away"
        repo.rename(away)  # the repository folder itself missing (a volume away for a moment): nothing changes
        await repository.refresh()
        assert serving_version(repository) == 1
        repo.mkdir()  # or empty (the mount point of a volume away): nothing changes either
        await repository.refresh()
        assert serving_version(repository) == 1 and repository.get("digits-full") is not None


async def test_a_pinned_models_kept_versions_whose_folders_go_are_let_go(repo: Path) -> None:
    publish(repo, NAME, 2)
    async with opened(repo, keep_versions=2) as repository:
        await repository.load(NAME, 1)
        await repository.load(NAME, 2)
        assert sorted(repository.loaded[NAME]) == [1, 2] and repository.pinned == {NAME: 2}
        shutil.rmtree(repo / NAME / "1")
        await repository.refresh()
        assert sorted(repository.loaded[NAME]) == [2] and repository.pinned == {NAME: 2}


async def test_a_version_replaced_in_place_is_verified_and_served_again(repo: Path) -> None:
    async with opened(repo) as repository:
        before = repository.get(NAME)
        assert before is not None and before.model.manifest.covariance == "diagonal"
        replace_in_place(repo, NAME, 1, source="digits-full")
        await repository.refresh()
        after = repository.get(NAME)
        assert after is not None and after is not before and after.model.manifest.covariance == "full"
        assert after.model.manifest.version == 1 and list(repository.loaded[NAME]) == [1]
        await repository.refresh()
        assert repository.get(NAME) is after  # unchanged since: not verified again


async def test_a_pinned_version_replaced_in_place_is_verified_and_served_again_still_pinned(repo: Path) -> None:
    publish(repo, NAME, 2)
    async with opened(repo) as repository:
        before = await repository.load(NAME, 1)  # pinned below the newest
        replace_in_place(repo, NAME, 1, source="digits-full")
        await repository.refresh()
        after = repository.get(NAME)
        assert after is not None and after is not before and after.model.manifest.covariance == "full"
        assert after.model.manifest.version == 1 and repository.pinned == {NAME: 1}
        await repository.refresh()
        assert repository.get(NAME) is after  # unchanged since: not verified again
        # replaced by files that fail verification: the runner in memory serves on, and the refusal is listed
        scorer = repo / NAME / "1" / "scorer.onnx"
        data = bytearray(scorer.read_bytes())
        data[len(data) // 2] ^= 0xFF
        scorer.write_bytes(bytes(data))
        await repository.refresh()
        assert repository.get(NAME) is after and f"{NAME}/1" in repository.refused and repository.pinned == {NAME: 1}
        with pytest.raises(BundleRefused):  # a load request verifies those files again, and refuses them again
            await repository.load(NAME, 1)
        assert repository.get(NAME) is after and f"{NAME}/1" in repository.refused


@pytest.mark.parametrize("request_kind", ["unload", "pin"])
async def test_a_poll_reverifying_a_pinned_version_does_not_undo_a_request_made_meanwhile(
    repo: Path, request_kind: str
) -> None:
    publish(repo, NAME, 2)
    async with opened(repo) as repository:
        await repository.load(NAME, 1)
        replace_in_place(repo, NAME, 1, source="digits-full")
        request = repository.unload(NAME) if request_kind == "unload" else repository.load(NAME, 2)
        await poll_behind(repository, request)
        if request_kind == "unload":
            assert repository.get(NAME) is None and NAME not in repository.pinned
        else:
            assert serving_version(repository) == 2 and repository.pinned == {NAME: 2}


async def test_a_refused_version_is_tried_again_once_its_files_change_and_forgotten_when_it_goes(repo: Path) -> None:
    publish(repo, NAME, 2, corrupt=True)
    publish(repo, NAME, 3, corrupt=True)
    async with opened(repo) as repository:
        assert serving_version(repository) == 1 and set(repository.refused) == {f"{NAME}/2", f"{NAME}/3"}
        shutil.rmtree(repo / NAME / "2")
        publish(repo, NAME, 2)  # re-published intact
        shutil.rmtree(repo / NAME / "3")  # and the other one deleted
        await repository.refresh()
        assert serving_version(repository) == 2 and repository.refused == {}
        assert repository.metrics.refused._value.get() == 0


async def test_the_default_model_is_chosen_once_and_the_same_in_every_worker(repo: Path, tmp_path: Path) -> None:
    shared = tmp_path / "peers"
    shared.mkdir()
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(opened(repo, Peers(shared, "a")))
        assert a.default_name == NAME  # the first name on disk
        shutil.copytree(repo / "digits-full", repo / "aaa")  # a model that sorts first appears
        (repo / "aaa" / "1" / "manifest.json").write_text(
            (repo / "aaa" / "1" / "manifest.json").read_text().replace('"name": "digits-full"', '"name": "aaa"')
        )
        await a.refresh()
        b = await stack.enter_async_context(opened(repo, Peers(shared, "b")))  # a worker started later
        assert a.default_name == b.default_name == NAME and b.get("aaa") is not None
    async with serving(repo) as client:  # one process: the first name when it started
        assert (await client.post("/v1/score", json={"inputs": [ROW]})).json()["model"] == "aaa"


async def test_a_deleted_default_model_is_not_replaced_by_another(repo: Path) -> None:
    async with serving(repo, poll_interval_s=0.05) as client:
        assert (await client.post("/v1/score", json={"inputs": [ROW]})).json()["model"] == NAME
        shutil.rmtree(repo / NAME)
        for _ in range(100):
            answer = await client.post("/v1/score", json={"inputs": [ROW]})
            if answer.status_code != 200:
                break
            await asyncio.sleep(0.05)
        assert answer.status_code == 404 and f"the default model '{NAME}' is not serving" in answer.json()["detail"]


async def test_with_every_model_unloaded_a_named_request_is_not_found_not_retry_later(repo: Path) -> None:
    async with serving(repo) as client:
        for name in ("digits-diag", "digits-full"):
            assert (await client.post(f"/v2/repository/models/{name}/unload")).status_code == 200
        answer = await client.post(f"/v1/models/{NAME}/score", json={"inputs": [ROW]})
        assert answer.status_code == 404 and "retry-after" not in answer.headers
        assert (await client.get(f"/v2/models/{NAME}.score/ready")).status_code == 404


async def test_monitoring_follows_the_bundle_a_version_holds(repo: Path) -> None:
    async with opened(repo) as repository:
        monitoring = repository.monitoring
        assert monitoring is not None
        first = repository.get(NAME)
        assert first is not None and first.watch is not None
        replace_in_place(repo, NAME, 1, source="digits-full")  # another model under the same name and version
        await repository.refresh()
        second = repository.get(NAME)
        assert second is not None and second.watch is not None and second.watch is not first.watch
        assert second.watch.threshold != first.watch.threshold  # its own reference
        watched = [(w.name, w.version) for w in monitoring.watches.values()]
        assert sorted(watched) == [("digits-diag", 1), ("digits-full", 1)]  # one series per name and version
        publish(repo, NAME, 2)  # a new version: the retired one leaves the figures
        await repository.refresh()
        assert sorted((w.name, w.version) for w in monitoring.watches.values()) == [
            ("digits-diag", 2),
            ("digits-full", 1),
        ]
        labels = {s.labels["version"] for m in monitoring.collect() for s in m.samples if s.labels["model"] == NAME}
        assert labels == {"2"}


async def test_a_stop_signal_during_start_up_leaves_the_models_not_loaded_yet(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    heard: list[int] = []

    def uvicorns(signum: int, frame: Any) -> None:  # standing in
        heard.append(signum)

    found = signal.signal(signal.SIGTERM, uvicorns)
    loaded = repository_module.load_bundle

    def load_then_stop(*args: Any, **kwargs: Any) -> Any:
        model = loaded(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # asked to stop while loading the first model
        return model

    monkeypatch.setattr(repository_module, "load_bundle", load_then_stop)
    try:
        app = create_app(ServiceSettings(model_repository=repo, log_requests=False))
        async with app.router.lifespan_context(app):
            assert sorted(app.state.repository.current) == [NAME]  # digits-full, after it, was not loaded
            assert heard == [signal.SIGTERM]  # the server's own handler still ran, and decides what follows
            assert signal.getsignal(signal.SIGTERM) is uvicorns  # put back as it was once start-up was over
    finally:
        signal.signal(signal.SIGTERM, found)


@pytest.mark.parametrize("pinned", [False, True])
async def test_the_files_restored_after_a_refused_replacement_clear_its_refusal(repo: Path, pinned: bool) -> None:
    async with opened(repo) as repository:
        if pinned:
            await repository.load(NAME, 1)
        before = repository.get(NAME)
        kept = repo.parent / "kept"
        shutil.copytree(repo / NAME / "1", kept)  # times kept, as cp -a, rsync -a or tar keep them
        scorer = repo / NAME / "1" / "scorer.onnx"
        data = bytearray(scorer.read_bytes())
        data[len(data) // 2] ^= 0xFF
        scorer.write_bytes(bytes(data))
        await repository.refresh()
        assert f"{NAME}/1" in repository.refused and repository.get(NAME) is before
        shutil.rmtree(repo / NAME / "1")
        kept.rename(repo / NAME / "1")  # the replacement undone
        await repository.refresh()
        assert repository.refused == {} and repository.metrics.refused._value.get() == 0
        assert repository.get(NAME) is before  # the runner in memory came from those very files
        assert repository.pinned == ({NAME: 1} if pinned else {})


async def test_a_pin_made_again_counts_its_folders_absence_afresh(repo: Path) -> None:
    publish(repo, NAME, 2)
    async with opened(repo) as repository:
        await repository.load(NAME, 2)
        moved = repo.parent / "two"
        (repo / NAME / "2").rename(moved)
        await repository.refresh()  # missing at one poll
        moved.rename(repo / NAME / "2")
        await repository.load(NAME, 2)  # pinned again before any poll saw it back
        (repo / NAME / "2").rename(moved)
        await repository.refresh()  # missing at one poll since that pin: it stands
        assert repository.pinned == {NAME: 2} and serving_version(repository) == 2


async def test_a_poll_between_the_rm_and_the_mv_of_a_replacement_keeps_the_version_serving(repo: Path) -> None:
    publish(repo, NAME, 2)
    async with opened(repo) as repository:
        before = repository.get(NAME)
        assert serving_version(repository) == 2 and before is not None
        staged = repo / NAME / ".tmp-2"
        shutil.copytree(repo / "digits-full" / "1", staged)
        manifest = json.loads((staged / "manifest.json").read_text())
        (staged / "manifest.json").write_text(json.dumps({**manifest, "name": NAME, "version": 2}))
        shutil.rmtree(repo / NAME / "2")
        await repository.refresh()  # the poll falls in between: version 2 serves on, not version 1
        assert repository.get(NAME) is before
        staged.rename(repo / NAME / "2")
        await repository.refresh()
        after = repository.get(NAME)
        assert after is not None and after is not before and after.model.manifest.covariance == "full"
        assert sorted(repository.loaded[NAME]) == [2]


async def test_a_poll_between_the_rm_and_the_mv_of_a_whole_model_folder_keeps_it_serving(repo: Path) -> None:
    async with opened(repo) as repository:
        before = repository.get(NAME)
        staged = repo / f".{NAME}-new"  # hidden: not a model while it is staged
        shutil.copytree(repo / "digits-full", staged)
        manifest = json.loads((staged / "1" / "manifest.json").read_text())
        (staged / "1" / "manifest.json").write_text(json.dumps({**manifest, "name": NAME}))
        shutil.rmtree(repo / NAME)
        await repository.refresh()  # the poll falls in between: the model serves on from memory
        assert repository.get(NAME) is before and before is not None
        staged.rename(repo / NAME)
        await repository.refresh()  # the same version number, other files: verified and served
        after = repository.get(NAME)
        assert after is not None and after is not before and after.model.manifest.covariance == "full"


async def test_a_model_loaded_again_counts_its_folders_absence_afresh(repo: Path) -> None:
    async with opened(repo) as repository:
        moved = repo.parent / "away"
        (repo / NAME).rename(moved)
        await repository.refresh()  # missing at one poll
        moved.rename(repo / NAME)
        await repository.load(NAME)  # loaded again before any poll saw it back
        shutil.rmtree(repo / NAME / "1")  # a replacement under way (rm, then mv) when the next poll looks
        await repository.refresh()  # missing at one poll since that load: it serves on
        assert serving_version(repository) == 1
