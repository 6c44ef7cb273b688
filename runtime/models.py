"""Which model runs now: an Engine and contour parameters per objective, built once and cached."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from lucida.models import Bundle, Registry
from lucida.models.manifest import ContourSpec

from .engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveModel:
    """An engine ready to run and the contour parameters to draw its heatmap with."""

    engine: Engine
    contours: ContourSpec

    @property
    def name(self) -> str:
        return self.engine.bundle.name


class ModelSelector:
    """A fixed bundle, or a registry resolving (task, objective) -> bundle.

    Engines are built the first time a bundle is needed and kept; `for_objective` returns None
    when no bundle claims that objective (the overlay stays off there).
    """

    def __init__(
        self,
        bundle: Bundle | None = None,
        registry: Registry | None = None,
        task: str = "lymph",
        device: str = "auto",
        num_threads: int | None = None,
    ):
        if bundle is None and registry is None:
            registry = Registry()
        self.bundle, self.registry, self.task = bundle, registry, task
        self.device, self.num_threads = device, num_threads
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()
        self.pinned: Bundle | None = None  # a deployed bundle, used at the objectives it claims

    def engine(self, bundle: Bundle) -> Engine:
        with self._lock:
            e = self._engines.get(bundle.name)
            if e is None or e.bundle.path != bundle.path:
                e = Engine(bundle, device=self.device, num_threads=self.num_threads)
                self._engines[bundle.name] = e
                log.info("loaded %s on %s (%s)", bundle.name, e.info.delegate, e.info.backend)
            return e

    def for_objective(self, objective: str | None) -> ActiveModel | None:
        pinned = self.pinned
        if pinned is not None and (objective is None or objective in pinned.manifest.objectives):
            return ActiveModel(self.engine(pinned), pinned.manifest.contours)
        if self.bundle is not None:
            m = self.bundle.manifest
            if objective is not None and objective not in m.objectives:
                return None
            return ActiveModel(self.engine(self.bundle), m.contours)
        if objective is None:
            return None
        try:
            resolved = self.registry.resolve(self.task, objective)
        except ValueError as exc:
            log.info("no model at %s: %s", objective, exc)
            return None
        if objective not in resolved.bundle.manifest.objectives:
            return None
        return ActiveModel(self.engine(resolved.bundle), resolved.contours)

    def preload(self, objectives) -> list[str]:
        """Build the engines for these objectives now, so a turn of the nosepiece is instant."""
        return sorted({a.name for a in map(self.for_objective, objectives) if a is not None})

    def pin(self, bundle: Bundle, engine: Engine | None = None) -> None:
        """Run `bundle` (already loaded and checked as `engine`, if given) wherever it applies."""
        with self._lock:
            if engine is not None:
                self._engines[bundle.name] = engine
            self.pinned = bundle

    def replace(self, bundle: Bundle) -> ActiveModel:
        """Use `bundle` from now on (a deploy or an activate): built before it is swapped in."""
        engine = Engine(bundle, device=self.device, num_threads=self.num_threads)
        with self._lock:
            self._engines[bundle.name] = engine
            if self.bundle is not None:
                self.bundle = bundle
        return ActiveModel(engine, bundle.manifest.contours)
