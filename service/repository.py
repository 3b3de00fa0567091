"""ModelRepository: the live set of served bundles, owned by the app's lifespan.

New versions are found by a poll (VAE_POLL_INTERVAL_S, 0 = off) or an explicit request (Triton's repository
extension). A version is verified (manifest, format, sha256, graph I/O, warm-up) off the event loop before it
serves, then swapped in with one dict assignment on the event loop: requests that already hold the previous
runner finish on it, and it is stopped only when the last of them is done. A refused version is logged, counted
and listed, and the version already serving keeps serving. VAE_KEEP_VERSIONS versions stay loaded per model.

Which version serves: the newest on disk that verifies (a refused newer one is reported, and an older one that
verifies serves instead), unless a load request named a version: that version then serves and stays pinned,
through polls, until a load without a version (back to the newest on disk, older than the one serving if that one's
folder is gone) or an unload. The default model (/v1/<op> without a name) is VAE_DEFAULT_MODEL, else the
alphabetically first model in the repository when the service first finds one, kept from then on (with several
workers, the first worker's choice: service/peers.py); when it does not serve, those requests fail naming it
instead of answering from another model.

The poll follows the disk: a version whose folder is gone stops serving (the newest left serves; a pin on it is
dropped, and the other workers told), a model whose folder is gone stops serving (the repository folder missing or
holding no model changes nothing: a volume away for a moment, or its empty mount point); either only once its folder
is missing at two polls in a row, since one poll may fall between the rm and the mv of a replacement. A version
replaced in place (its files changed) is verified and served again, and a refused version is tried again once its
files change (a copy completed, a bundle re-published), its refusal forgotten when its folder goes. What a request
asked wins over a poll that waited for the lock behind it. A worker applies only the requests newer than those it has
applied: a request for one model leaves the others as they are.

An unloaded model stays unloaded, through polls, until a load request; its refusals go with it. With several
workers, a load or unload reaches every worker before it is answered, and each does what the first did
(service/peers.py). A worker records a request with the change it makes, under its lock, and its follower, under
the same lock, never applies another worker's request older than the newest it has done for that model: two
requests for one model made to two workers at once end with every worker doing the one recorded last.

Reasons for refusals name files relative to the repository, never its absolute path (/readyz is unauthenticated).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from contract import list_versions
from runtime.bundle import BundleError, Fingerprint, fingerprint, load_bundle, resolve_providers
from service.errors import BundleRefused, ModelNotFound, quoted
from service.inference import ModelRunner
from service.metrics import Metrics
from service.monitoring import Monitoring
from service.peers import CHECK_INTERVAL_S, Peers, Requested
from service.settings import ServiceSettings

log = logging.getLogger(__name__)
# how a load is asked for: "pin" a version (a load request naming one), serve the "newest" on disk (a load request
# without one), or a "poll"'s find: served only if newer than the one serving (or replacing one whose folder is gone,
# or replaced in place), and never over a pin or an unload that took the lock first; "repin": a poll's find that the
# pinned version was replaced in place, verified again only while that pin still stands once the lock is taken
Mode = Literal["pin", "newest", "poll", "repin"]
T = TypeVar("T")
VOLUME_THREADS = 2  # threads reading the repository's folders (listings, report files), apart from any other work
RETRY_FAILED_S = 5.0  # a peer's request that failed here is tried again after this, doubling up to the next
RETRY_FAILED_MAX_S = 300.0


class ModelRepository:
    def __init__(
        self,
        settings: ServiceSettings,
        metrics: Metrics,
        peers: Peers | None = None,
        monitoring: Monitoring | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.monitoring = monitoring
        self.peers = peers or Peers(None)
        self.root: Path = settings.model_repository
        self.current: dict[str, ModelRunner] = {}  # name -> the version /v1 and unversioned /v2 requests get
        self.loaded: dict[str, dict[int, ModelRunner]] = {}  # name -> version -> runner (newest KEEP_VERSIONS)
        self.refused: dict[str, str] = {}  # "<name>/<version>" -> reason
        self._prints: dict[str, Fingerprint] = {}  # "<name>/<version>" -> its files when verified or refused
        self._verified: dict[str, Fingerprint] = {}  # "<name>/<version>" -> the files its loaded runner came from
        self._missing: dict[str, int] = {}  # name -> the version (pinned or serving) the last poll did not find
        self._absent: set[str] = set()  # loaded models whose folders the last poll that saw a model did not find
        self.pinned: dict[str, int] = {}  # name -> the version a load request asked for
        self.unloaded: set[str] = set()  # names an unload request took out (polls leave them out until a load)
        self._applied: int | None = None  # generation of the peers' shared state applied here
        # model -> the generation of the newest request done here (asked of this worker, or a peer's it applied):
        # the follower leaves an older one alone, which a request made here since it was read has overtaken
        self._latest: dict[str, int] = {}
        self._failed: dict[str, tuple[int, str]] = {}  # model -> (generation, why) of a request that failed here
        self._retry: dict[
            str, tuple[float, float]
        ] = {}  # model -> (monotonic time of its next try, the pause before it)
        self.served_once = False  # a model has served: no longer "not ready yet" when none serves (plumbing.held)
        self.stopping = False  # a stop signal came during start-up: the models not loaded yet are left alone
        self.default_name: str | None = settings.default_model
        self._providers: list[str] = []
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []  # the poll and the peers' follower
        # each uvicorn worker loads every model and runs batches side by side: the usable CPUs are shared among them
        self._threads = settings.threads_per_run()
        self._volume = ThreadPoolExecutor(VOLUME_THREADS, thread_name_prefix="vae-repository")  # see on_volume
        self._listing: asyncio.Future[dict[str, list[int]]] | None = None

    async def start(self) -> None:
        self._providers = await asyncio.to_thread(resolve_providers, self.root, self.settings.device)
        await self.follow_peers()  # what repository requests asked of the other workers, before serving
        # a worker started later (a restart): a model that does not serve was unloaded, refused or deleted, as the
        # others answer (404), not still arriving (503, worth a retry) as before the service's first model served
        self.served_once = self.served_once or await asyncio.to_thread(self.peers.served_before)
        loop = asyncio.get_running_loop()
        if self.peers.shared:  # following from now on, not after the first load: a long one (many models) must not
            # keep a request made to another worker waiting for this one, then answered 504 though it was done
            self._tasks.append(loop.create_task(self._follow()))
        try:
            await self.refresh()
        except BaseException:  # a start-up that fails leaves no follower behind
            await self._stop_tasks()
            raise
        if self.settings.poll_interval_s > 0:
            self._tasks.append(loop.create_task(self._poll()))

    async def stop(self) -> None:
        await self._stop_tasks()
        for versions in self.loaded.values():
            for runner in versions.values():
                await runner.stop()
        self._volume.shutdown(wait=False, cancel_futures=True)

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def stop_loading(self) -> None:
        """A stop signal during start-up: the models not loaded yet are left alone (the process is to exit)."""
        self.stopping = True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.refresh()
            except OSError as exc:  # e.g. the repository's volume went away for a moment
                log.error("repository poll failed: %s", exc)
            except Exception:  # never the poll's end: it would stop following the disk, unseen
                log.exception("repository poll failed")

    async def _follow(self) -> None:
        pause = CHECK_INTERVAL_S
        while True:
            await asyncio.sleep(pause)
            try:
                now = time.monotonic()
                await self.follow_peers(retry={name for name, (due, _) in self._retry.items() if now >= due})
                pause = CHECK_INTERVAL_S
            except Exception as exc:  # never the follower's end: this worker would drift from the others, unseen
                if isinstance(exc, OSError | ValueError):  # an unreadable state file or a full disk
                    log.error("reading or acknowledging the workers' repository state failed: %s", exc)
                else:
                    log.exception("applying the workers' repository state failed")
                pause = min(pause * 2, 5.0)  # an error that stays is logged every few seconds, not ten times a second

    async def follow_peers(self, retry: Collection[str] = ()) -> None:
        """Apply a newer state of the repository requests made to any worker, and acknowledge it. A request that
        failed here is tried again at each new state, and by itself when its time in self._retry comes (the names in
        `retry`): RETRY_FAILED_S after it failed, then twice as long after each failure, up to RETRY_FAILED_MAX_S.
        Without that this worker would drift from the others (a bundle's copy still arriving, say) until some
        unrelated request."""
        generation, asked = await asyncio.to_thread(self.peers.read)
        new = self._applied is None or generation > self._applied
        if not new and not retry:
            return
        for name in [n for n in retry if n not in asked]:  # nothing asks it any more (the shared state was reset)
            self._failed.pop(name, None)
            self._retry.pop(name, None)
        for name, request in asked.items():
            if name in self._failed:
                if not new and name not in retry:
                    continue
            elif request.at <= self._latest.get(name, 0):
                continue  # done here already, or overtaken by a request made here (one model's leaves the others)
            try:
                await self._apply(name, request)
                self._failed.pop(name, None)
                self._retry.pop(name, None)
            except (ModelNotFound, BundleRefused) as exc:
                pause = RETRY_FAILED_S  # counted from now, when the try is over (a large bundle's may take long)
                if self._failed.get(name, (None,))[0] == request.at:  # the same request failed again: less often
                    pause = min(self._retry.get(name, (0.0, RETRY_FAILED_S))[1] * 2, RETRY_FAILED_MAX_S)
                else:  # logged once per request, not at each try
                    log.warning("%s: another worker's request could not be done in this one: %s", name, exc)
                self._failed[name] = (request.at, str(exc))
                self._retry[name] = (time.monotonic() + pause, pause)
        self._applied = max(generation, self._applied or 0)  # never back (a shared state reset under running workers)
        await asyncio.to_thread(self.peers.acknowledge, self._applied, dict(self._failed))

    async def _apply(self, name: str, request: Requested) -> None:
        """Make this worker do what a request to another worker did (nothing when it already does), unless a request
        made here since the follower read it has overtaken it: decided under the lock that requests made here hold
        from their change until it is published, so every worker ends with the newest request for each model."""
        async with self._lock:
            if request.at <= self._latest.get(name, 0):
                return
            if request.unloaded:
                self._take_out(name)
            elif request.dropped:  # the last request was a pin (a load): this worker's polls follow the disk from now
                self.pinned.pop(name, None)  # on, even where it had not done the pin yet (an unload before it stands
                self.unloaded.discard(name)  # no more); a load of the newest instead would verify it again in every
                # worker, refused or not, at every new state
            elif request.pinned is not None:  # a pin (of the version pinned here too: its files may be replaced)
                await self._serve(name, request.pinned, "pin")
            else:  # the version the requester served, unpinned; the newest on disk if that one's folder is gone
                served = request.served if request.served in (await self.disk()).get(name, []) else None
                await self._serve(name, served, "newest")
            self._latest[name] = request.at

    async def _tell_pin_dropped(self, name: str, version: int) -> None:
        """Record that this worker dropped a pin with its folder, for the other workers and those started later,
        without waiting for them: the shared state must not bring back what the disk took away. Only while the
        shared state still holds that pin: a request made since (another pin, an unload) stands. Under the lock."""
        if self.peers.shared:
            generation = await asyncio.to_thread(
                self.peers.publish, name, Requested(dropped=True), only_if=Requested(pinned=version)
            )
            if generation is not None:
                self._latest[name] = generation

    async def _publish(self, name: str, request: Requested) -> int | None:
        """Record a request made to this worker, which it has just done, for the other workers (None with none).
        Under the lock, with the change: published in the order done here, and the follower, which decides under
        the same lock, never applies a peer's older request over it."""
        if not self.peers.shared:
            return None
        generation = await asyncio.to_thread(self.peers.publish, name, request)
        assert generation is not None  # published unconditionally
        self._latest[name] = generation
        return generation

    async def _wait_for_peers(self, name: str, generation: int | None) -> None:
        """Wait until every other worker has done the request this one published (outside the lock)."""
        if generation is not None and (failed := await self.peers.wait(generation, name)):
            raise BundleRefused(f"{name} serves in this worker, but {'; '.join(failed)}")

    async def on_volume(self, read: Callable[..., T], *args: Any) -> T:
        """read(*args), a function that reads the repository's folders, on the repository's own threads: a slow or
        stalled volume (NFS, an object store mounted by FUSE) holds one of them, not the event loop and the health
        checks with it, nor the threads that build large answers."""
        return await asyncio.get_running_loop().run_in_executor(self._volume, read, *args)

    async def disk(self) -> dict[str, list[int]]:
        return await self.on_volume(self.on_disk)

    async def _listed(self) -> dict[str, list[int]]:
        # the listings' scan: requests arriving while one runs share it, so a stalled volume holds one scan, however
        # many listings wait on it (a repository change scans afresh: it needs the disk as it is after the change)
        if self._listing is None or self._listing.done():
            self._listing = asyncio.ensure_future(self.disk())
        return await asyncio.shield(self._listing)

    def on_disk(self) -> dict[str, list[int]]:
        if not self.root.is_dir():
            return {}
        found = {p.name: list_versions(p) for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        return {name: versions for name, versions in sorted(found.items()) if versions}

    async def _scan(self) -> dict[str, list[int]]:
        """The models and versions on disk; the default model chosen once there is one to choose."""
        disk = await self.disk()
        if self.default_name is None and disk:  # on_disk is sorted by name; the other workers may have chosen
            self.default_name = await asyncio.to_thread(self.peers.agree_default, next(iter(disk)))
            log.info("default model (behind /v1/<op> without a name): %s", self.default_name)
        return disk

    async def refresh(self) -> None:
        """Follow the disk (the module's docstring): serve the newest version of every model that verifies, unless a
        load request pinned another one or an unload took it out."""
        disk = await self._scan()
        if disk:  # a repository folder missing or empty (a volume away for a moment): every model would look deleted
            gone = [n for n in self.loaded if n not in disk and n not in self.unloaded]
            for name in gone:
                if name in self._absent:  # gone at one poll: so is a model folder being replaced (rm, mv)
                    await self._forget(name)
            self._absent = {n for n in gone if n in self.loaded}
            for key in [k for k in self.refused if int(k.split("/")[1]) not in disk.get(k.split("/")[0], [])]:
                self._refusal_gone(key)
        for name, versions in disk.items():
            if self.stopping:  # the process is to exit: loading the rest (verification, warm-up) would only delay it
                log.info("stopping: %s and the models after it are not loaded", name)
                break
            if name in self.unloaded:
                continue
            if name in self.pinned:
                key = f"{name}/{(pinned := self.pinned[name])}"
                if pinned in versions:
                    self._missing.pop(name, None)
                    if self._prints.get(key) != fingerprint(self.root / name / str(pinned)):
                        # replaced in place: the new files serve (refused: the runner in memory serves on, as it
                        # does for an unpinned version, and the next change of files is tried again)
                        with contextlib.suppress(BundleRefused, ModelNotFound):
                            await self._load(name, pinned, "repin")
                    await self._let_go_of_gone(name)
                    continue
                if self._missing.get(name) != pinned:  # gone at one poll: so is a folder being replaced (rm, mv)
                    self._missing[name] = pinned
                    continue
                async with self._lock:
                    if self.pinned.get(name) != pinned:
                        continue  # a request since pinned another version or unloaded it: it stands
                    log.warning(
                        "%s version %d was pinned, and its folder is gone: the newest left serves", name, pinned
                    )
                    # _missing still holds it, so _follow_versions below replaces it now, not one more poll later
                    del self.pinned[name]
                    await self._tell_pin_dropped(name, pinned)
            await self._follow_versions(name, versions)

    async def _follow_versions(self, name: str, versions: list[int]) -> None:
        """The poll's part for one unpinned model: the newest version that verifies serves (one replaced in place is
        verified again), and loaded versions whose folders are gone are let go."""
        current = self.current.get(name)
        serving = current.model.manifest.version if current is not None else None
        if serving is not None and serving not in versions and all(v < serving for v in versions):
            if self._missing.get(name) != serving:  # gone at one poll: so is a folder being replaced (rm, mv)
                self._missing[name] = serving
                await self._let_go_of_gone(name)
                return  # it serves on from memory until the next poll, instead of an older version meanwhile
        self._missing.pop(name, None)
        for version in reversed(versions):  # newest first, down to the one serving
            if serving in versions and version < serving:
                break
            key = f"{name}/{version}"
            if version == serving and self._prints.get(key) == fingerprint(self.root / name / str(version)):
                break  # serving, unchanged
            if key in self.refused and self._prints.get(key) == fingerprint(self.root / name / str(version)):
                continue  # refused, unchanged since: try the next older one (an explicit load retries it)
            # ModelNotFound: deleted since the scan (the next poll sees it gone)
            with contextlib.suppress(BundleRefused, ModelNotFound):
                await self._load(name, version, "poll")
                break
        await self._let_go_of_gone(name)

    async def _let_go_of_gone(self, name: str) -> None:
        """Retire the kept (not serving) versions of `name` whose folders are gone."""
        on_disk = (await self.disk()).get(name, []) if name in self.current else []
        if name in self.current and any(v not in on_disk for v in self.loaded.get(name, {})):
            async with self._lock:
                if name in self.current:  # on the disk as it is now: a version published since the scan stays
                    self._prune(name, (await self.disk()).get(name, []))

    async def load(self, name: str, version: int | None = None) -> ModelRunner:
        """Verify and serve <name>/<version> and pin it (None: the newest on disk, unpinned), in every worker;
        BundleRefused if it fails a check, and then the version already serving keeps serving."""
        async with self._lock:
            runner = await self._serve(name, version, "newest" if version is None else "pin")
            assert runner is not None  # only a poll's load is skipped
            served = runner.model.manifest.version if version is None else None
            generation = await self._publish(name, Requested(pinned=version, served=served))
        await self._wait_for_peers(name, generation)
        return runner

    async def _load(self, name: str, version: int | None, mode: Literal["poll", "repin"]) -> ModelRunner | None:
        """A poll's load (_serve), under the lock."""
        async with self._lock:
            return await self._serve(name, version, mode)

    async def _serve(self, name: str, version: int | None, mode: Mode) -> ModelRunner | None:
        """Serve <name>/<version> as `mode` says (Mode); the runner that then serves it, None when a poll's load
        found the model pinned or unloaded once it had the lock. Under the lock."""
        if mode == "poll" and (name in self.pinned or name in self.unloaded):
            return None  # a request decided while this poll waited for the lock: it stands
        if mode == "repin" and self.pinned.get(name) != version:
            return None  # likewise: another pin or an unload since the poll looked
        versions = (await self._scan()).get(name, [])
        if not versions:
            raise ModelNotFound(f"no bundle named {quoted(name)} in the model repository")
        version = versions[-1] if version is None else version
        if version not in versions:
            raise ModelNotFound(f"{name} has no version {version} on disk; it has {versions}")
        key = f"{name}/{version}"
        runner, files = self.loaded.get(name, {}).get(version), fingerprint(self.root / name / str(version))
        if runner is not None and self._verified.get(key) != files:
            log.warning("%s was replaced in place (its files changed): verifying it again", key)
            runner = None
        if runner is None:
            runner = await self._verify(name, version)
        elif self._prints.get(key) != files:  # the files it was verified from are back (a replacement undone)
            self._prints[key] = files
            if self.refused.pop(key, None) is not None:  # and the replacement's refusal with them
                self.metrics.refused.set(len(self.refused))
        self.unloaded.discard(name)
        self._missing.pop(name, None)
        self._absent.discard(name)
        if mode in ("pin", "repin"):
            self.pinned[name] = version
        else:
            self.pinned.pop(name, None)
        current = self.current.get(name)
        serving = None if current is None else current.model.manifest.version
        if mode != "poll" or serving is None or serving not in versions or version >= serving:
            if current is not runner:
                self.current[name] = runner  # the swap: one assignment on the event loop
                if not self.served_once:
                    self.served_once = True
                    self.peers.mark_served()  # once per worker: a tiny file in the workers' folder
                log.info("serving %s version %d%s", name, version, " (pinned)" if name in self.pinned else "")
        self._prune(name, versions)
        return self.current[name] if mode == "newest" else runner

    async def _verify(self, name: str, version: int) -> ModelRunner:
        key, path = f"{name}/{version}", self.root / name / str(version)
        # the files before reading them: a change during the load is seen by the next poll
        self._prints[key] = files = fingerprint(path)
        try:
            # root: nothing outside the repository is read through a link (a linked version, graph or manifest)
            model = await asyncio.to_thread(load_bundle, path, self._providers, self._threads, self.root)
        except BundleError as exc:
            reason = self._relative(str(exc))
            self.refused[key] = reason
            self.metrics.refused.set(len(self.refused))
            log.error("refused bundle %s: %s", path, exc)
            raise BundleRefused(f"{key} was refused: {reason}") from None
        self.refused.pop(key, None)
        self.metrics.refused.set(len(self.refused))
        self._verified[key] = files
        watch = None if self.monitoring is None else self.monitoring.watch(model.manifest)
        runner = ModelRunner(model, self.settings, self.metrics, watch)
        runner.start()
        replaced = self.loaded.setdefault(name, {}).get(version)
        self.loaded[name][version] = runner
        if replaced is not None:  # the same version verified again (replaced in place): the old one retires
            self._retire(name, replaced)
        self.metrics.model_info.labels(name, str(version), model.manifest.covariance, model.provider).set(1)
        log.info("loaded %s version %d from %s on %s", name, version, path, model.provider)
        return runner

    def _relative(self, text: str) -> str:
        # onnxruntime's messages carry the file's full path: keep only the part inside the repository
        for prefix in {str(self.root.resolve()), str(self.root.absolute()), str(self.root)}:
            text = text.replace(prefix + "/", "")
        return text

    def _prune(self, name: str, on_disk: list[int]) -> None:
        """Keep the serving version and the newest others still on disk, VAE_KEEP_VERSIONS in all."""
        versions = self.loaded[name]
        serving = self.current[name].model.manifest.version
        others = sorted((v for v in versions if v != serving), reverse=True)
        kept = [v for v in others if v in on_disk][: self.settings.keep_versions - 1]
        for old in others:
            if old not in kept:
                self._retire(name, versions.pop(old))

    def _retire(self, name: str, runner: ModelRunner) -> None:
        m = runner.model.manifest
        self.metrics.model_retired(name, str(m.version), m.covariance, runner.model.provider)
        runner.retire()
        watch = runner.watch
        if self.monitoring is not None and watch is not None:
            if not any(r.watch is watch for vs in self.loaded.values() for r in vs.values()):
                self.monitoring.drop(watch)  # its figures leave /metrics with the version

    def _refusal_gone(self, key: str) -> None:
        self.refused.pop(key, None)
        self._prints.pop(key, None)
        self.metrics.refused.set(len(self.refused))

    async def _forget(self, name: str) -> None:
        """Stop serving a model whose folder is gone (not an unload: it serves again if the folder comes back)."""
        async with self._lock:
            pinned = self.pinned.get(name)
            if name not in await self.disk() and self._stop_serving(name):
                log.warning("%s: its folder is gone from the repository; it no longer serves", name)
                if pinned is not None:
                    await self._tell_pin_dropped(name, pinned)

    async def unload(self, name: str) -> None:
        """Stop serving `name` (requests in flight finish) until a load request, in every worker. A model in the
        repository folder that this worker does not serve is unloaded too: with several workers, a peer may serve
        what this one has not found yet or could not load, and unloading an unloaded model again is no error.
        ModelNotFound only for a name neither loaded nor in the repository."""
        async with self._lock:
            if name not in self.loaded and name not in await self.disk():
                raise ModelNotFound(f"no model named {quoted(name)} is loaded or in the repository")
            self._take_out(name)
            generation = await self._publish(name, Requested(unloaded=True))
        await self._wait_for_peers(name, generation)

    def _take_out(self, name: str) -> None:
        """Unload `name` here (under the lock): polls leave it out until a load request. Its refusals go with it
        (an operator unloading a broken model is done with it: /readyz and the gauge no longer count them; a load
        request verifies again)."""
        self.unloaded.add(name)
        for key in [k for k in self.refused if k.split("/")[0] == name]:
            self._refusal_gone(key)
        if self._stop_serving(name):
            log.info("unloaded %s", name)

    def _stop_serving(self, name: str) -> bool:
        """Retire every loaded version of `name` (requests in flight finish); False when none was loaded."""
        if name not in self.loaded:
            return False
        self.current.pop(name, None)
        self.pinned.pop(name, None)
        self._missing.pop(name, None)
        self._absent.discard(name)
        for runner in self.loaded.pop(name).values():
            self._retire(name, runner)
        return True

    def get(self, name: str, version: int | None = None) -> ModelRunner | None:
        if version is None:
            return self.current.get(name)
        return self.loaded.get(name, {}).get(version)

    async def index(self) -> list[dict[str, Any]]:
        """Every model on disk or loaded: its versions, which serve, and why any was refused."""
        rows = []
        disk = await self._listed()
        for name in sorted(set(disk) | set(self.loaded)):
            current = self.current.get(name)
            rows.append(
                {
                    "name": name,
                    "versions_on_disk": disk.get(name, []),
                    "loaded_versions": sorted(self.loaded.get(name, {})),
                    "serving_version": current.model.manifest.version if current else None,
                    "pinned": name in self.pinned,
                    "unloaded": name in self.unloaded,
                    "state": "READY" if current else "UNAVAILABLE",
                    "refused": {k.split("/")[1]: v for k, v in self.refused.items() if k.split("/")[0] == name},
                }
            )
        return rows
