"""ModelRepository: the live set of served bundles, owned by the app's lifespan.

New versions are found by a poll (VAE_POLL_INTERVAL_S, 0 = off) or an explicit request (Triton's repository
extension). A version is verified (manifest, format, sha256, graph I/O, warm-up) off the event loop before it
serves, then swapped in with one dict assignment on the event loop: requests that already hold the previous
runner finish on it, and it is stopped only when the last of them is done. A refused version is logged, counted
and listed, and the version already serving keeps serving. VAE_KEEP_VERSIONS versions stay loaded per model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from contract import list_versions
from service.errors import BundleRefused, ModelNotFound
from service.inference import ModelRunner
from service.metrics import Metrics
from service.registry import BundleError, load_bundle, resolve_providers
from service.settings import ServiceSettings

log = logging.getLogger(__name__)


class ModelRepository:
    def __init__(self, settings: ServiceSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.root: Path = settings.model_repository
        self.current: dict[str, ModelRunner] = {}  # name -> the version /v1 and unversioned /v2 requests get
        self.loaded: dict[str, dict[int, ModelRunner]] = {}  # name -> version -> runner (newest KEEP_VERSIONS)
        self.refused: dict[str, str] = {}  # "<name>/<version>" -> reason
        self._providers: list[str] = []
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._providers = await asyncio.to_thread(resolve_providers, self.root, self.settings.device)
        await self.refresh()
        if self.settings.poll_interval_s > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for versions in self.loaded.values():
            for runner in versions.values():
                await runner.stop()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.refresh()
            except OSError as exc:  # e.g. the repository's volume went away for a moment
                log.error("repository poll failed: %s", exc)

    def on_disk(self) -> dict[str, list[int]]:
        if not self.root.is_dir():
            return {}
        found = {p.name: list_versions(p) for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        return {name: versions for name, versions in sorted(found.items()) if versions}

    async def refresh(self) -> None:
        """Load the newest version of every model that is neither loaded nor already refused."""
        for name, versions in self.on_disk().items():
            newest = versions[-1]
            if newest in self.loaded.get(name, {}) or f"{name}/{newest}" in self.refused:
                continue
            if self.current.get(name) is not None and self.current[name].model.manifest.version > newest:
                continue
            with contextlib.suppress(BundleRefused):
                await self.load(name, newest)

    async def load(self, name: str, version: int | None = None) -> ModelRunner:
        """Verify and serve <name>/<version> (default: the newest on disk); BundleRefused if it fails a check."""
        async with self._lock:
            versions = self.on_disk().get(name, [])
            if not versions:
                raise ModelNotFound(f"no bundle named {name!r} in the repository {self.root}")
            version = versions[-1] if version is None else version
            if version not in versions:
                raise ModelNotFound(f"{name} has no version {version} on disk; it has {versions}")
            if version in self.loaded.get(name, {}):
                return self.loaded[name][version]
            key, path = f"{name}/{version}", self.root / name / str(version)
            try:
                model = await asyncio.to_thread(load_bundle, path, self._providers, self.settings.intra_op_threads)
            except BundleError as exc:
                self.refused[key] = str(exc)
                self.metrics.refused.set(len(self.refused))
                log.error("refused bundle %s: %s", path, exc)
                raise BundleRefused(f"{key} was refused: {exc}") from None
            self.refused.pop(key, None)
            self.metrics.refused.set(len(self.refused))
            runner = ModelRunner(model, self.settings, self.metrics)
            runner.start()
            self.loaded.setdefault(name, {})[version] = runner
            current = self.current.get(name)
            if current is None or version > current.model.manifest.version:
                self.current[name] = runner  # the swap: one assignment on the event loop
            self.metrics.model_info.labels(name, str(version), model.manifest.covariance, model.provider).set(1)
            self._prune(name)
            log.info("serving %s version %d from %s on %s", name, version, path, model.provider)
            return runner

    def _prune(self, name: str) -> None:
        versions = self.loaded[name]
        for old in sorted(versions)[: -self.settings.keep_versions]:
            self._retire(name, versions.pop(old))

    def _retire(self, name: str, runner: ModelRunner) -> None:
        m = runner.model.manifest
        self.metrics.model_info.remove(name, str(m.version), m.covariance, runner.model.provider)
        runner.retire()

    async def unload(self, name: str) -> None:
        async with self._lock:
            if name not in self.loaded:
                raise ModelNotFound(f"no model named {name!r} is loaded")
            self.current.pop(name, None)
            for runner in self.loaded.pop(name).values():
                self._retire(name, runner)
            log.info("unloaded %s", name)

    def get(self, name: str, version: int | None = None) -> ModelRunner | None:
        if version is None:
            return self.current.get(name)
        return self.loaded.get(name, {}).get(version)

    def index(self) -> list[dict[str, Any]]:
        """Every model on disk or loaded: its versions, which serve, and why any was refused."""
        rows = []
        disk = self.on_disk()
        for name in sorted(set(disk) | set(self.loaded)):
            current = self.current.get(name)
            rows.append(
                {
                    "name": name,
                    "versions_on_disk": disk.get(name, []),
                    "loaded_versions": sorted(self.loaded.get(name, {})),
                    "serving_version": current.model.manifest.version if current else None,
                    "state": "READY" if current else "UNAVAILABLE",
                    "refused": {k.split("/")[1]: v for k, v in self.refused.items() if k.split("/")[0] == name},
                }
            )
        return rows
