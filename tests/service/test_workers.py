"""Several workers, one service: a repository request made to one worker reaches every worker before it is
answered, a worker started later catches up, and /metrics adds up every worker's counts."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

import service.repository as repository_module
from runtime.bundle import load_bundle
from service.errors import BundleRefused, ModelNotFound, NotReady, WorkerTimeout
from service.inference import ModelRunner
from service.metrics import Metrics
from service.peers import Peers, Requested
from service.plumbing import held
from service.repository import ModelRepository
from service.settings import MULTIPROC_DIR, ServiceSettings
from service.v2 import index_rows
from tests.service.conftest import vae_serve
from tests.service.test_live_repository import ROW, publish
from tests.service.test_repository_follows_disk import replace_in_place

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def worker(repo: Path, shared: Path, me: str) -> AsyncIterator[ModelRepository]:
    """One worker's repository (in this process: each gets its own name for its acknowledgement file)."""
    repository = ModelRepository(ServiceSettings(model_repository=repo), Metrics(), Peers(shared, me))
    await repository.start()
    try:
        yield repository
    finally:
        await repository.stop()


@asynccontextmanager
async def two_workers(repo: Path, shared: Path) -> AsyncIterator[tuple[ModelRepository, ModelRepository]]:
    """Workers a and b of one service, started in turn."""
    async with worker(repo, shared, "a") as a, worker(repo, shared, "b") as b:
        yield a, b


@asynccontextmanager
async def workers_apart(repo: Path, tmp_path: Path) -> AsyncIterator[tuple[ModelRepository, ModelRepository, Path]]:
    """Workers a and b of one service, b on a copy of the repository without the digits-diag version 2 that a sees
    (yielded third, b's repository)."""
    other = tmp_path / "other"
    shutil.copytree(repo, other)
    publish(repo, "digits-diag", 2)
    shared = tmp_path / "shared"
    shared.mkdir()
    async with worker(repo, shared, "a") as a, worker(other, shared, "b") as b:
        yield a, b, other


async def request_for(repository: ModelRepository, name: str) -> ModelRunner:
    """The runner a request for `name` gets from this worker, or the error it gets (ModelNotFound, NotReady)."""
    async with held(repository, name, None) as runner:
        return runner


def serving_version(repository: ModelRepository, name: str) -> int | None:
    runner = repository.get(name)
    return None if runner is None else runner.model.manifest.version


async def test_a_load_without_a_version_brings_every_worker_to_the_newest_version(repo: Path, tmp_path: Path) -> None:
    async with two_workers(repo, tmp_path) as (a, b):
        publish(repo, "digits-diag", 2)  # no poll: a load request is how a new version is taken up
        await a.load("digits-diag")
        assert serving_version(a, "digits-diag") == serving_version(b, "digits-diag") == 2


async def test_pinning_again_a_version_replaced_in_place_brings_every_worker_to_its_new_files(
    repo: Path, tmp_path: Path
) -> None:
    publish(repo, "digits-diag", 2)
    async with two_workers(repo, tmp_path) as (a, b):
        await a.load("digits-diag", 1)
        replace_in_place(repo, "digits-diag", 1, source="digits-full")  # no poll: a load request takes it up
        await a.load("digits-diag", 1)  # the same pin again, through one worker
        for w in (a, b):
            runner = w.get("digits-diag")
            assert runner is not None and runner.model.manifest.covariance == "full" and w.pinned == {"digits-diag": 1}


async def test_a_request_for_one_model_leaves_the_others_as_they_are_in_every_worker(
    repo: Path, tmp_path: Path
) -> None:
    async with two_workers(repo, tmp_path) as (a, b):
        await a.load("digits-diag")  # a load without a version on record
        publish(repo, "digits-diag", 2)  # staged, not taken up: no poll, no request for it
        await a.load("digits-full", 1)
        await b.unload("digits-full")
        assert serving_version(a, "digits-diag") == serving_version(b, "digits-diag") == 1


async def test_a_pin_the_disk_took_away_does_not_come_back_in_a_worker_started_later(
    repo: Path, tmp_path: Path
) -> None:
    publish(repo, "digits-diag", 2)
    publish(repo, "digits-diag", 3)
    async with two_workers(repo, tmp_path) as (a, b):
        await a.load("digits-diag", 2)
        assert serving_version(b, "digits-diag") == 2
        (repo / "digits-diag" / "2").rename(tmp_path / "two")
        for _ in range(2):  # as their polls do: the pin goes with its folder, gone at two polls in a row
            await a.refresh()
            await b.refresh()
        assert serving_version(a, "digits-diag") == serving_version(b, "digits-diag") == 3
        (tmp_path / "two").rename(repo / "digits-diag" / "2")  # restored
        async with worker(repo, tmp_path, "c") as c:
            assert serving_version(c, "digits-diag") == 3 and c.pinned == {}


async def test_a_dropped_pin_told_to_the_other_workers_leaves_the_disk_to_their_polls_without_verifying_again(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(repo, "digits-diag", 2)
    async with two_workers(repo, tmp_path) as (a, b):
        await a.load("digits-diag", 1)  # pinned in both
        for task in b._tasks:  # b's rounds stepped by hand from here
            task.cancel()
        publish(repo, "digits-diag", 3, corrupt=True)  # the newest on disk, refused wherever it is verified
        shutil.rmtree(repo / "digits-diag" / "1")  # the pinned version deleted
        for _ in range(2):  # gone at two of a's polls in a row: a drops the pin, tells b, and serves 2
            await a.refresh()
        assert serving_version(a, "digits-diag") == 2 and "digits-diag/3" in a.refused
        verified: list[Path] = []

        def counted(path: Path, *args: Any) -> Any:
            verified.append(path)
            return load_bundle(path, *args)

        monkeypatch.setattr(repository_module, "load_bundle", counted)
        await b.follow_peers()  # the pin goes; b's own polls follow the disk, as a poll does
        a.peers.publish("digits-full", Requested())  # later states: nothing about digits-diag is done again
        await b.follow_peers()
        assert verified == [] and b.pinned == {} and "digits-diag" not in b._failed
        await b.refresh()  # b's poll: version 3 refused once, 2 serves
        assert serving_version(b, "digits-diag") == 2 and [p.name for p in verified] == ["3", "2"]


async def wait_for_record(shared: Path, name: str, asked: Requested) -> None:
    """Until the shared state's record of `name` asks what `asked` does (its generation aside)."""
    deadline = time.monotonic() + 30
    while (record := Peers(shared, "x").read()[1].get(name)) is None or replace(record, at=0) != asked:
        assert time.monotonic() < deadline, f"{name} was never recorded as {asked}"
        await asyncio.sleep(0.01)


async def test_a_dropped_pin_told_to_a_worker_that_had_not_done_the_pin_yet_leaves_no_unload_behind(
    repo: Path, tmp_path: Path
) -> None:
    publish(repo, "digits-diag", 2)
    async with two_workers(repo, tmp_path) as (a, b):
        await a.unload("digits-diag")
        for task in b._tasks:  # b's rounds stepped by hand from here: b is behind (busy verifying, say)
            task.cancel()
        pin = asyncio.create_task(a.load("digits-diag", 1))
        await wait_for_record(tmp_path, "digits-diag", Requested(pinned=1))
        shutil.rmtree(repo / "digits-diag" / "1")  # the pinned version deleted before b did the pin
        for _ in range(2):  # gone at two of a's polls in a row: a drops the pin and serves 2
            await a.refresh()
        await b.follow_peers()  # b reads only that the pin was dropped: the load before it is what b does
        await asyncio.wait_for(pin, 30)
        await b.refresh()
        assert serving_version(a, "digits-diag") == serving_version(b, "digits-diag") == 2
        assert a.unloaded == b.unloaded == set() and a.pinned == b.pinned == {}


async def test_a_load_without_a_version_brings_a_worker_behind_to_the_version_served_not_one_staged_since(
    repo: Path, tmp_path: Path
) -> None:
    async with two_workers(repo, tmp_path) as (a, b):
        for task in b._tasks:  # b's rounds stepped by hand: b is behind
            task.cancel()
        publish(repo, "digits-diag", 2)
        load = asyncio.create_task(a.load("digits-diag"))  # no poll: a load request takes up version 2
        await wait_for_record(tmp_path, "digits-diag", Requested(served=2))
        publish(repo, "digits-diag", 3)  # staged after the answer was decided, before b followed
        await b.follow_peers()
        await asyncio.wait_for(load, 30)
        assert serving_version(a, "digits-diag") == serving_version(b, "digits-diag") == 2
        assert a.pinned == b.pinned == {}


async def test_a_dropped_pin_told_by_a_poll_never_overrides_a_request_made_since(repo: Path, tmp_path: Path) -> None:
    publish(repo, "digits-diag", 2)
    publish(repo, "digits-diag", 3)
    async with two_workers(repo, tmp_path) as (a, b):
        await a.load("digits-diag", 2)
        shutil.rmtree(repo / "digits-diag" / "2")  # the pinned version deleted, then the operator pins another
        await b.load("digits-diag", 3)
        # a's poll decided before that request reached a (it was verifying another model): it tells the peers it
        # dropped the pin to 2, which must not undo the pin to 3
        await a._tell_pin_dropped("digits-diag", 2)
        assert Peers(tmp_path, "x").read()[1]["digits-diag"].pinned == 3
        await a.follow_peers()
        await b.follow_peers()
        publish(repo, "digits-diag", 4)
        await a.refresh()
        await b.refresh()
        assert serving_version(a, "digits-diag") == serving_version(b, "digits-diag") == 3
        assert a.pinned == b.pinned == {"digits-diag": 3}


async def test_the_worker_that_took_a_load_does_not_take_up_a_later_version_alone(repo: Path, tmp_path: Path) -> None:
    async with two_workers(repo, tmp_path) as (a, b):
        for task in a._tasks:  # a's own follower reads the shared state only after the new version is staged
            task.cancel()
        await a.load("digits-diag")
        publish(repo, "digits-diag", 2)  # staged after the answer: no worker takes it up by itself
        await a.follow_peers()
        await b.follow_peers()
        assert serving_version(a, "digits-diag") == serving_version(b, "digits-diag") == 1


async def test_a_load_or_unload_made_to_one_worker_is_done_by_every_worker_before_the_answer(
    repo: Path, tmp_path: Path
) -> None:
    publish(repo, "digits-diag", 2)
    async with two_workers(repo, tmp_path) as (a, b):
        assert serving_version(a, "digits-diag") == serving_version(b, "digits-diag") == 2
        await a.unload("digits-diag")
        assert b.get("digits-diag") is None and "digits-diag" in b.unloaded
        await b.load("digits-diag", 1)  # the other way round, with a pinned version
        assert serving_version(a, "digits-diag") == 1 and a.pinned == {"digits-diag": 1}
        await a.load("digits-diag")  # unpinned: back to the newest
        assert serving_version(b, "digits-diag") == 2 and b.pinned == {}


async def test_an_unload_made_to_a_worker_that_has_not_loaded_the_model_unloads_it_in_every_worker(
    repo: Path, tmp_path: Path
) -> None:
    async with two_workers(repo, tmp_path) as (a, b):
        shutil.copytree(repo / "digits-diag" / "1", tmp_path / "staged")  # a new model, found by a's poll, not b's
        manifest = json.loads((tmp_path / "staged" / "manifest.json").read_text())
        (tmp_path / "staged" / "manifest.json").write_text(json.dumps(manifest | {"name": "digits-new"}))
        (repo / "digits-new").mkdir()
        os.rename(tmp_path / "staged", repo / "digits-new" / "1")
        await a.refresh()
        assert a.get("digits-new") is not None and b.get("digits-new") is None
        await b.unload("digits-new")  # the request reached b: the model a serves is unloaded all the same
        assert a.get("digits-new") is None and "digits-new" in a.unloaded and "digits-new" in b.unloaded
        await b.unload("digits-new")  # and unloading it again is no error
        await b.refresh()  # nor does b's own poll bring it back
        assert b.get("digits-new") is None
        with pytest.raises(ModelNotFound, match="is loaded or in the repository"):
            await b.unload("nope")


async def test_an_unloaded_model_stays_unloaded_through_polls_until_a_load(repo: Path) -> None:
    repository = ModelRepository(ServiceSettings(model_repository=repo, poll_interval_s=0.02), Metrics())
    await repository.start()
    try:
        await repository.unload("digits-diag")
        publish(repo, "digits-diag", 2)  # a new version does not bring it back either
        publish(repo, "digits-full", 2)  # the mark of a poll that has seen both: it serves digits-full's
        deadline = time.monotonic() + 30
        while serving_version(repository, "digits-full") != 2:
            assert time.monotonic() < deadline, "no poll picked up digits-full version 2"
            await asyncio.sleep(0.01)
        assert repository.get("digits-diag") is None and "digits-diag" in repository.unloaded
        await repository.load("digits-diag")
        assert serving_version(repository, "digits-diag") == 2
        with pytest.raises(ModelNotFound):
            await repository.unload("nope")
    finally:
        await repository.stop()


async def test_unloading_a_model_takes_its_refusals_with_it_until_a_load_verifies_again(repo: Path) -> None:
    repository = ModelRepository(ServiceSettings(model_repository=repo), Metrics())
    await repository.start()
    try:
        publish(repo, "digits-diag", 2, corrupt=True)
        with pytest.raises(BundleRefused):
            await repository.load("digits-diag")
        await repository.unload("digits-diag")  # the operator is done with it: no longer a refusal on /readyz
        assert repository.refused == {} and repository.metrics.refused._value.get() == 0
        with pytest.raises(BundleRefused):  # a load request verifies it again
            await repository.load("digits-diag")
        assert "digits-diag/2" in repository.refused
    finally:
        await repository.stop()


async def test_a_worker_that_starts_later_applies_the_earlier_requests_before_it_serves(
    repo: Path, tmp_path: Path
) -> None:
    publish(repo, "digits-diag", 2)
    async with worker(repo, tmp_path, "a") as a:
        await a.unload("digits-full")
        await a.load("digits-diag", 1)
        async with worker(repo, tmp_path, "late") as late:
            assert late.get("digits-full") is None and serving_version(late, "digits-diag") == 1


async def test_requests_for_one_model_made_to_two_workers_at_once_end_with_both_doing_the_later_one(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifying, release = threading.Event(), threading.Event()

    def held_load_bundle(path: Path, *args: Any) -> Any:
        if path.parts[-2:] == ("digits-diag", "2") and not release.is_set():
            verifying.set()
            release.wait(30)  # the pin to version 2, taken by a, still verifying in a
        return load_bundle(path, *args)

    async with two_workers(repo, tmp_path) as (a, b):
        publish(repo, "digits-diag", 2)  # staged (no poll): the pin verifies it
        monkeypatch.setattr(repository_module, "load_bundle", held_load_bundle)
        pin = asyncio.create_task(a.load("digits-diag", 2))
        assert await asyncio.to_thread(verifying.wait, 30)
        unload = asyncio.create_task(b.unload("digits-diag"))  # done and published by b first
        deadline = time.monotonic() + 30
        while not Peers(tmp_path, "x").read()[1].get("digits-diag", Requested()).unloaded:
            assert time.monotonic() < deadline, "b never published its unload"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # a's follower reads the state ten times a second: it has read the unload by now
        release.set()  # a's pin is done after b's unload, and published after it: it is the later request
        await asyncio.wait_for(asyncio.gather(pin, unload), 30)
        state = Peers(tmp_path, "x").read()[1]["digits-diag"]
        assert (state.pinned, state.unloaded) == (2, False)
        for w in (a, b):
            assert serving_version(w, "digits-diag") == 2 and w.pinned == {"digits-diag": 2}
            assert "digits-diag" not in w.unloaded


async def test_a_worker_still_loading_at_start_up_follows_a_request_made_to_another_meanwhile(
    repo: Path, tmp_path: Path
) -> None:
    async with worker(repo, tmp_path, "a") as a:
        late = ModelRepository(ServiceSettings(model_repository=repo), Metrics(), Peers(tmp_path, "late"))
        gate = asyncio.Event()
        follow_versions = late._follow_versions

        async def held_before_digits_full(name: str, versions: list[int]) -> None:
            if name == "digits-full":
                await gate.wait()  # the first load still going (many models, a slow device): the rest wait
            await follow_versions(name, versions)

        late._follow_versions = held_before_digits_full  # type: ignore[method-assign]
        starting = asyncio.create_task(late.start())
        try:
            deadline = time.monotonic() + 30
            while late.get("digits-diag") is None:
                assert time.monotonic() < deadline, "late never loaded digits-diag"
                await asyncio.sleep(0.01)
            await asyncio.wait_for(a.unload("digits-diag"), 20)  # answered while late is still loading
            assert not starting.done() and late.get("digits-diag") is None and "digits-diag" in late.unloaded
        finally:
            gate.set()
            await starting
            await late.stop()
        assert late.get("digits-full") is not None


async def test_a_worker_started_after_every_model_was_unloaded_answers_not_found_as_the_others_do(
    repo: Path, tmp_path: Path
) -> None:
    async with worker(repo, tmp_path, "a") as a:
        for name in ("digits-diag", "digits-full"):
            await a.unload(name)
        async with worker(repo, tmp_path, "late") as late:
            for w in (a, late):  # not 503 "no model is loaded" with a Retry-After: no retry brings it back
                with pytest.raises(ModelNotFound, match="no model 'digits-diag' is loaded"):
                    await request_for(w, "digits-diag")
            listed = {entry["name"]: entry["unloaded"] for entry in await late.index()}
            assert listed == {"digits-diag": True, "digits-full": True}
            assert {row["reason"] for row in await index_rows(late, ready_only=False)} == {"unloaded"}


async def test_a_worker_whose_start_up_fails_leaves_no_follower_running(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = ModelRepository(ServiceSettings(model_repository=repo), Metrics(), Peers(tmp_path, "failing"))

    async def volume_gone() -> None:
        raise OSError("the repository's volume went away")

    monkeypatch.setattr(failing, "refresh", volume_gone)
    with pytest.raises(OSError, match="volume went away"):
        await failing.start()
    following = [t for t in asyncio.all_tasks() if "_follow" in repr(t.get_coro()) and not t.done()]
    assert failing._tasks == [] and following == []


async def test_a_worker_started_after_the_models_folders_went_answers_not_found_as_the_others_do(
    repo: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "moved"
    async with worker(repo, tmp_path, "a"):  # it served: the service is past "not ready yet"
        moved.mkdir()
        for name in ("digits-diag", "digits-full"):
            (repo / name).rename(moved / name)  # no request recorded: the folders taken away
        async with worker(repo, tmp_path, "late") as late:
            with pytest.raises(ModelNotFound):  # not 503 "no model is loaded", worth a retry: nothing is arriving
                await request_for(late, "digits-diag")
    (tmp_path / "fresh").mkdir()
    async with worker(repo, tmp_path / "fresh", "first") as first:  # a service that never served: 503 until one does
        with pytest.raises(NotReady):
            await request_for(first, "digits-diag")
    for name in ("digits-diag", "digits-full"):
        (moved / name).rename(repo / name)


async def test_a_worker_that_served_while_applying_the_recorded_requests_stays_past_not_ready(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with worker(repo, tmp_path, "a") as a:
        await a.unload("digits-full")
        await a.load("digits-diag", 1)  # recorded: a worker started later serves it while applying the state
        monkeypatch.setattr(Peers, "served_before", lambda self: False)  # as if the mark could not be written
        async with worker(repo, tmp_path, "late") as late:
            assert late.served_once


async def test_a_worker_that_could_not_follow_is_named_in_the_answer_and_says_why_in_its_log(
    repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with workers_apart(repo, tmp_path) as (a, b, _):
        with pytest.raises(BundleRefused, match="serves in this worker, but worker .*no version 2"):
            await a.load("digits-diag", 2)
        assert serving_version(a, "digits-diag") == 2 and serving_version(b, "digits-diag") == 1
    logged = [r.getMessage() for r in caplog.records if "another worker's request could not be done" in r.getMessage()]
    assert len(logged) == 1 and "no version 2" in logged[0]


async def test_a_followers_failure_is_heard_after_a_later_round_and_tried_again(repo: Path, tmp_path: Path) -> None:
    async with workers_apart(repo, tmp_path) as (a, b, other):
        for task in b._tasks:  # b's rounds stepped by hand
            task.cancel()
        first = a.peers.publish("digits-diag", Requested(pinned=2))  # a request b cannot do
        await b.follow_peers()
        a.peers.publish("digits-full", Requested(unloaded=True))  # and another, which b does, before a looks
        await b.follow_peers()
        assert first is not None
        heard = await a.peers.wait(first, "digits-diag", timeout_s=5)
        assert len(heard) == 1 and "no version 2" in heard[0]
        publish(other, "digits-diag", 2)  # once b can, the next state has it done
        a.peers.publish("digits-full", Requested())
        await b.follow_peers()
        assert serving_version(b, "digits-diag") == 2 and await a.peers.wait(first, "digits-diag", timeout_s=5) == []


async def test_a_request_that_failed_in_a_worker_is_tried_again_there_without_a_new_request(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repository_module, "RETRY_FAILED_S", 0.2, raising=False)
    async with workers_apart(repo, tmp_path) as (a, b, other):  # b's copy of version 2 still arriving, say
        with pytest.raises(BundleRefused, match="no version 2"):
            await a.load("digits-diag", 2)
        publish(other, "digits-diag", 2)  # the copy arrives; nobody asks anything more
        deadline = time.monotonic() + 20
        while serving_version(b, "digits-diag") != 2:
            assert time.monotonic() < deadline, "b never tried the pin again"
            await asyncio.sleep(0.05)
        assert b.pinned == {"digits-diag": 2} and b._failed == {}


async def test_each_failed_request_is_tried_again_less_and_less_often_on_its_own_schedule(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repository_module, "RETRY_FAILED_S", 5.0)
    monkeypatch.setattr(repository_module, "RETRY_FAILED_MAX_S", 20.0)
    async with workers_apart(repo, tmp_path) as (a, b, _):
        for task in b._tasks:  # b's rounds stepped by hand
            task.cancel()
        a.peers.publish("digits-diag", Requested(pinned=2))  # a request b cannot do
        before = time.monotonic()
        await b.follow_peers()
        due, pause = b._retry["digits-diag"]
        assert pause == 5.0 and due >= before + 5.0  # counted from the end of the try
        for expected in (10.0, 20.0, 20.0):  # each time it fails again: twice the pause, up to the most
            await b.follow_peers(retry={"digits-diag"})
            assert b._retry["digits-diag"][1] == expected
        await b.follow_peers()  # nothing newer and nothing due: nothing tried
        assert b._retry["digits-diag"][1] == 20.0
        a.peers.publish("digits-full", Requested(pinned=7))  # a new request, which fails too
        await b.follow_peers()
        assert b._retry["digits-full"][1] == 5.0  # its own schedule, from the start
        await b.follow_peers(retry={"digits-full"})
        assert b._retry["digits-full"][1] == 10.0 and b._retry["digits-diag"][1] == 20.0

        def full_disk(*args: Any) -> None:
            raise OSError("no space left on device")

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(b.peers, "acknowledge", full_disk)
            with pytest.raises(OSError):
                await b.follow_peers(retry={"digits-full"})
        assert b._retry["digits-full"][1] == 20.0  # the schedule moved on all the same: not tried at every check
        publish(b.root, "digits-diag", 2)
        await b.follow_peers(retry={"digits-diag"})  # done at last: off the schedule
        assert "digits-diag" not in b._retry and "digits-diag" not in b._failed and b.pinned["digits-diag"] == 2


async def test_waiting_for_a_live_worker_that_never_follows_times_out(tmp_path: Path) -> None:
    stuck, asking = Peers(tmp_path, "stuck"), Peers(tmp_path, "asking")
    stuck.acknowledge(0, {})  # alive (this process) and never moves on
    generation = asking.publish("m", Requested(unloaded=True))
    with pytest.raises(WorkerTimeout, match="had not after 0.2 s"):
        await asking.wait(generation, "m", timeout_s=0.2)


async def test_a_dead_workers_acknowledgement_is_ignored_and_removed(tmp_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(child.stdout)  # that process has exited
    (tmp_path / "ack-dead.json").write_text(f'{{"pid": {dead}, "generation": 0, "failures": {{}}}}')
    asking = Peers(tmp_path, "asking")
    generation = asking.publish("m", Requested(unloaded=True))
    assert await asking.wait(generation, "m", timeout_s=5) == []
    assert not (tmp_path / "ack-dead.json").exists()


def test_one_process_has_no_peers(tmp_path: Path) -> None:
    alone = Peers(None)
    assert not alone.shared and alone.read() == (0, {})
    alone.acknowledge(3, {})  # nothing written anywhere
    assert list(tmp_path.iterdir()) == []


async def _burst(base: str, path: str, n: int = 48) -> list[httpx.Response]:
    async def one() -> httpx.Response:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:  # a connection each: any worker answers
            return await client.post(path, json={"inputs": [ROW]})

    return list(await asyncio.gather(*[one() for _ in range(n)]))


def _workers(responses: list[httpx.Response]) -> set[str]:
    # a request id is a per-process prefix and a counter
    return {r.headers["x-request-id"].rsplit("-", 1)[0] for r in responses}


async def test_two_real_workers_follow_one_unload_and_load_and_share_one_metrics_page(repo: Path) -> None:
    with vae_serve(repo, VAE_WORKERS="2") as (base, _):
        path = "/v1/models/digits-diag/score"
        sent, seen = 0, set[str]()
        for _ in range(10):  # until both workers have answered (new connections are spread by the kernel)
            before = await _burst(base, path)
            sent += len(before)
            seen |= _workers(before)
            if len(seen) == 2:
                break
        assert len(seen) == 2 and {r.status_code for r in before} == {200}
        assert httpx.post(f"{base}/v2/repository/models/digits-diag/unload").status_code == 200
        after = await _burst(base, path)
        assert {r.status_code for r in after} == {404}  # every worker, at once
        assert httpx.post(f"{base}/v2/repository/models/digits-diag/load").status_code == 200
        again = await _burst(base, path)
        assert {r.status_code for r in again} == {200}
        metrics = httpx.get(f"{base}/metrics").text
    counts = {
        line.split("status=")[1][1:4]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('vae_requests_total{endpoint="/v1/models/{name}/score"')
    }
    assert counts == {"200": sent + len(again), "404": len(after)}  # both workers' counts, added up
    assert (
        'vae_model_info{covariance="diagonal",model="digits-diag",provider="CPUExecutionProvider",version="1"} 1.0'
        in (metrics)
    )


def test_a_starting_worker_clears_the_live_gauges_of_dead_workers_and_a_stopping_one_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, me = int(child.stdout), os.getpid()
    files = [f"gauge_livesum_{dead}.db", f"gauge_livemax_{dead}.db", f"gauge_livesum_{me}.db", f"counter_{dead}.db"]
    for name in files:
        (tmp_path / name).touch()
    monkeypatch.setenv(MULTIPROC_DIR, str(tmp_path))
    Metrics.worker_started()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"gauge_livesum_{me}.db", f"counter_{dead}.db"])
    Metrics.worker_stopped()  # counters stay: a dead worker's requests still count
    assert [p.name for p in tmp_path.iterdir()] == [f"counter_{dead}.db"]


@pytest.mark.anyio
async def test_a_worker_whose_start_up_fails_leaves_its_reason_for_vae_serves_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.app import create_app
    from service.monitoring import Monitoring
    from service.settings import PEERS_DIR

    monkeypatch.setenv(PEERS_DIR, str(tmp_path))
    assert Peers.from_env().startup_failure() is None

    def broken(self: Monitoring) -> None:  # any step before serving, not only the repository and the gRPC port
        raise OSError("no room for the drift window")

    monkeypatch.setattr(Monitoring, "start", broken)
    app = create_app(ServiceSettings(model_repository=tmp_path / "models", log_requests=False))
    with pytest.raises(OSError):
        async with app.router.lifespan_context(app):
            pytest.fail("the worker started serving")
    assert Peers.from_env().startup_failure() == "OSError: no room for the drift window"
