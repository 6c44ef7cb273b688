"""Which model runs now: an Engine and contour parameters per objective, built once and cached."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
from lucida.models import Bundle, Registry
from lucida.overlay.contours import ContourParams

from .devices import build_engine, device_specs
from .engine import Engine

log = logging.getLogger(__name__)


def pipeline_threads() -> int:
    """Interpreter threads in the live loop: all cores but one (at least one)."""
    return max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True)
class ActiveModel:
    """An engine ready to run and the contour parameters to draw its heatmap with.

    normalize: the bundle's colour normalization (RGB uint8 -> RGB uint8) for the model's input
    only, never for what is displayed; None when the bundle asks for none.
    """

    engine: Engine
    contours: ContourParams
    normalize: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def of(cls, engine: Engine, contours: ContourParams | dict) -> ActiveModel:
        from lucida.calibration.color_norm import normalizer_from_manifest

        if not isinstance(contours, ContourParams):
            contours = ContourParams.from_mapping(contours)
        return cls(engine, contours, normalizer_from_manifest(engine.bundle.manifest.color_norm))

    @property
    def name(self) -> str:
        return self.engine.bundle.name

    def class_styles(self, off=()) -> tuple | None:
        """The drawable (positive) classes with names, colours and on/off state (names in `off`
        are off); None for a single unlabelled positive class (drawn in the renderer's colour)."""
        from lucida.overlay.classes import class_styles

        o = self.engine.manifest.output
        if len(o.positives) < 2 and not o.labels:
            return None
        names = [o.label(k) for k in range(o.channels)]
        return class_styles(o.positives, names, [lab.color for lab in o.labels], off)


class ModelSelector:
    """A fixed bundle, or a registry resolving (task, objective) -> bundle.

    Engines are built the first time a bundle is needed and kept; `for_objective` returns None
    when no bundle claims that objective (the overlay stays off there).

    preload: give each objective's bundle Edge TPUs of its own when `preload()` runs (the devices
    of `device` dealt out in turn), so every device keeps one model's parameters in its on-chip
    cache and a turn of the nosepiece switches engines without loading anything. With fewer
    devices than bundles it says so (`placement_note`) and every bundle uses every device (the
    Edge TPU reloads its cache on each switch).
    """

    def __init__(
        self,
        bundle: Bundle | None = None,
        registry: Registry | None = None,
        task: str = "lymph",
        device: str | list[str] = "auto",
        num_threads: int | None = None,
        preload: bool = False,
    ):
        if bundle is None and registry is None:
            registry = Registry()
        self.bundle, self.registry, self.task = bundle, registry, task
        self.device = device
        # one core stays free for capture and rendering, which run beside inference
        self.num_threads = num_threads or pipeline_threads()
        self.preload_devices = preload
        self.placement: dict[str, list[str]] = {}  # bundle name -> the devices it has alone
        self.placement_note = ""  # why bundles share devices although preload was asked for
        self._engines: dict[str, Engine] = {}
        self._built_on: dict[str, object] = {}  # bundle name -> the device spec it was built for
        self._lock = threading.Lock()
        self.pinned: Bundle | None = None  # a deployed bundle, used at the objectives it claims

    def _device_for(self, bundle: Bundle):
        """The devices this bundle runs on: its own with a placement, else `device`."""
        own = self.placement.get(bundle.name)
        return (own[0] if len(own) == 1 else own) if own else self.device

    def engine(self, bundle: Bundle) -> Engine:
        with self._lock:
            e = self._engines.get(bundle.name)
            device = self._device_for(bundle)
            if e is None or e.bundle.path != bundle.path or self._built_on[bundle.name] != device:
                e = build_engine(bundle, device=device, num_threads=self.num_threads)
                self._keep(bundle.name, e, device)
                log.info("loaded %s on %s (%s)", bundle.name, e.info.delegate, e.info.backend)
            return e

    def _keep(self, name: str, engine: Engine, device=None) -> None:
        """Store `engine` for bundle `name`; the one it replaces releases its devices' threads
        (a frame still running on it finishes on the calling thread)."""
        old = self._engines.get(name)
        self._engines[name] = engine
        self._built_on[name] = self.device if device is None else device
        if old is not None and old is not engine:
            old.close()

    def close(self) -> None:
        """Release every engine's devices (several Edge TPUs: their threads)."""
        with self._lock:
            for e in self._engines.values():
                e.close()

    def _resolve(
        self, objective: str | None, task: str | None = None
    ) -> tuple[Bundle, object] | None:
        """(bundle, contour parameters) for this objective and task (default: the task chosen
        now), or None; builds nothing. A pinned bundle serves its own task only."""
        task = self.task if task is None else task
        pinned = self.pinned
        if (
            pinned is not None
            and pinned.manifest.task == task
            and (objective is None or objective in pinned.manifest.objectives)
        ):
            return pinned, pinned.manifest.contours
        if self.bundle is not None:
            m = self.bundle.manifest
            if objective is not None and objective not in m.objectives:
                return None
            return self.bundle, m.contours
        if objective is None:
            return None
        try:
            resolved = self.registry.resolve(task, objective)
        except ValueError as exc:
            log.info("no model at %s: %s", objective, exc)
            return None
        if objective not in resolved.bundle.manifest.objectives:
            return None
        return resolved.bundle, resolved.contours

    def for_objective(self, objective: str | None) -> ActiveModel | None:
        found = self._resolve(objective)
        return None if found is None else ActiveModel.of(self.engine(found[0]), found[1])

    def bundle_for(self, objective: str | None, task: str | None = None) -> Bundle | None:
        """The bundle `for_objective` would run at this objective (for `task`, default the one
        chosen now), without building an engine."""
        found = self._resolve(objective, task)
        return None if found is None else found[0]

    def tasks(self) -> list[str]:
        """The tasks this selector can run: the registry's bundles' and the pinned one's."""
        found = {m.task for _, m in self.registry.manifests().values()} if self.registry else set()
        for b in (self.bundle, self.pinned):
            if b is not None:
                found.add(b.manifest.task)
        return sorted(found)

    def set_task(self, task: str) -> None:
        """Resolve bundles for `task` from now on (the pipeline's reload_model applies it)."""
        if task not in self.tasks():
            raise ValueError(
                f"task {task!r}: no model for it on this device; expected one of "
                f"{', '.join(self.tasks()) or 'none'}"
            )
        with self._lock:
            self.task = task

    def preload(self, objectives) -> list[str]:
        """Build the engines for these objectives now, so a turn of the nosepiece is instant;
        with `preload_devices`, each bundle first gets devices of its own (`place`)."""
        objectives = sorted({o for o in objectives if o is not None}, key=str)
        if self.preload_devices:
            found = (self._resolve(o) for o in objectives)
            self.place([f[0] for f in found if f is not None])
        return sorted({a.name for a in map(self.for_objective, objectives) if a is not None})

    def place(self, bundles: list[Bundle]) -> dict[str, list[str]]:
        """Deal the configured devices out to these bundles (device i to bundle i mod n).

        Fewer devices than bundles: no placement, the reason in `placement_note` (logged), and
        every bundle loads on every device when it is switched to.
        """
        names = list(dict.fromkeys(b.name for b in bundles))
        specs = device_specs(self.device)
        with self._lock:
            self.placement, self.placement_note = {}, ""
            if len(names) < 2:
                return {}
            if len(specs) < len(names):
                self.placement_note = (
                    f"models.preload: {len(names)} bundles ({', '.join(names)}) but "
                    f"{len(specs)} Edge TPU(s) in models.device ({', '.join(specs) or 'none'}): "
                    "not one device each; every bundle loads on the shared device(s) when "
                    "switched to"
                )
                log.warning("%s", self.placement_note)
                return {}
            self.placement = {n: specs[i :: len(names)] for i, n in enumerate(names)}
            log.info("preload: %s", self.placement)
            return dict(self.placement)

    def pin(self, bundle: Bundle, engine: Engine | None = None) -> None:
        """Run `bundle` (already loaded and checked as `engine`, if given) wherever it applies;
        its task becomes the task chosen now."""
        with self._lock:
            if engine is not None:
                self._keep(bundle.name, engine)
            self.pinned = bundle
            self.task = bundle.manifest.task

    def rebuild(self, engine: Engine) -> Engine:
        """A new engine for `engine`'s bundle (new interpreter, Edge TPU delegate reopened; the
        CPU when the device is gone), used from now on: the watchdog's cure for a hung invoke."""
        name = engine.bundle.name
        device = self._built_on.get(name, self.device)  # the devices placed for this bundle
        new = build_engine(
            engine.bundle,
            device=device,
            backend=getattr(engine, "backend", None),
            num_threads=self.num_threads,
        )
        with self._lock:  # not closed: the hung engine's thread still holds it
            self._engines[name] = new
            self._built_on[name] = device
        return new

    def replace(self, bundle: Bundle) -> ActiveModel:
        """Use `bundle` from now on (a deploy or an activate): built before it is swapped in."""
        device = self._device_for(bundle)
        engine = build_engine(bundle, device=device, num_threads=self.num_threads)
        with self._lock:
            self._keep(bundle.name, engine, device)
            if self.bundle is not None:
                self.bundle = bundle
        return ActiveModel.of(engine, bundle.manifest.contours)
