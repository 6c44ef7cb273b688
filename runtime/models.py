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
        self.device = device
        # one core stays free for capture and rendering, which run beside inference
        self.num_threads = num_threads or pipeline_threads()
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
            return ActiveModel.of(self.engine(pinned), pinned.manifest.contours)
        if self.bundle is not None:
            m = self.bundle.manifest
            if objective is not None and objective not in m.objectives:
                return None
            return ActiveModel.of(self.engine(self.bundle), m.contours)
        if objective is None:
            return None
        try:
            resolved = self.registry.resolve(self.task, objective)
        except ValueError as exc:
            log.info("no model at %s: %s", objective, exc)
            return None
        if objective not in resolved.bundle.manifest.objectives:
            return None
        return ActiveModel.of(self.engine(resolved.bundle), resolved.contours)

    def bundle_for(self, objective: str | None) -> Bundle | None:
        """The bundle `for_objective` would run at this objective, without building an engine."""
        pinned = self.pinned
        if pinned is not None and (objective is None or objective in pinned.manifest.objectives):
            return pinned
        if self.bundle is not None:
            ok = objective is None or objective in self.bundle.manifest.objectives
            return self.bundle if ok else None
        if objective is None:
            return None
        try:
            b = self.registry.resolve(self.task, objective).bundle
        except ValueError:
            return None
        return b if objective in b.manifest.objectives else None

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
        return ActiveModel.of(engine, bundle.manifest.contours)
