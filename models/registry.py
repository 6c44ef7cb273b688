"""Which bundle runs for (task, objective), with defaults and per-objective overrides.

Like ar-microscope's model config: each task has a `default` entry and optional entries per
objective; an entry names a bundle and may override its contour parameters, e.g.

    {"lymph": {"default": {"bundle": "lymph-m"},
               "40x": {"bundle": "lymph-l", "contours": {"threshold": 0.6}}}}

Without an entry, the bundles that claim the objective are candidates and the first by name wins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from lucida.overlay.contours import ContourParams
from pydantic import BaseModel, ConfigDict, ValidationError

from .bundle import MANIFEST, Bundle, BundleError, load_bundle, read_manifest
from .manifest import Manifest

SHIPPED_DIR = Path(__file__).resolve().parent
DEFAULT_TASK_CONFIG = {"lymph": {"default": {"bundle": "lymph-m"}}}


class RegistryEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str
    contours: Optional[Dict[str, Optional[float]]] = None


@dataclass(frozen=True)
class Resolved:
    """The bundle chosen for (task, objective) and the contour parameters to draw it with."""

    bundle: Bundle
    contours: ContourParams
    objective: str


class Registry:
    def __init__(self, search_dirs=(SHIPPED_DIR,), config: dict | None = None):
        self.search_dirs = [Path(d) for d in search_dirs]
        self.config = self._validate(DEFAULT_TASK_CONFIG if config is None else config)
        self._manifests: dict[str, tuple[Path, Manifest]] | None = None
        self._loaded: dict[str, Bundle] = {}

    @staticmethod
    def _validate(config: dict) -> dict:
        out = {}
        for task, entries in config.items():
            out[task] = {}
            for key, entry in entries.items():
                try:
                    out[task][key] = RegistryEntry.model_validate(entry)
                except ValidationError as exc:
                    err = exc.errors()[0]
                    loc = ".".join(str(p) for p in err["loc"])
                    raise BundleError(f"model config {task}.{key}.{loc}: {err['msg']}") from None
        return out

    def manifests(self) -> dict[str, tuple[Path, Manifest]]:
        """Every bundle folder found, by name (manifests validated; files checked when loaded)."""
        if self._manifests is None:
            found = {}
            for d in self.search_dirs:
                if not d.is_dir():
                    continue
                for sub in sorted(p for p in d.iterdir() if (p / MANIFEST).is_file()):
                    m = read_manifest(sub)
                    found.setdefault(m.name, (sub, m))
            self._manifests = found
        return self._manifests

    def add(self, folder: str | os.PathLike) -> Bundle:
        """Register (or replace) one bundle folder, verified."""
        b = load_bundle(folder)
        self.manifests()[b.name] = (b.path, b.manifest)
        self._loaded[b.name] = b
        return b

    def get(self, name: str) -> Bundle:
        if name not in self._loaded:
            if name not in self.manifests():
                known = ", ".join(sorted(self.manifests())) or "none"
                raise BundleError(f"no bundle named {name!r} (known: {known})")
            self._loaded[name] = load_bundle(self.manifests()[name][0])
        return self._loaded[name]

    def resolve(self, task: str, objective: str) -> Resolved:
        """The bundle and contour parameters for this task at this objective."""
        entries = self.config.get(task, {})
        entry = entries.get(objective) or entries.get("default")
        if entry is not None:
            bundle = self.get(entry.bundle)
        else:
            names = [
                n
                for n, (_, m) in sorted(self.manifests().items())
                if m.task == task and objective in m.objectives
            ]
            if not names:
                tasks = sorted({m.task for _, m in self.manifests().values()}) or ["none"]
                raise BundleError(
                    f"no bundle for task {task!r} at {objective} (tasks known: {', '.join(tasks)})"
                )
            bundle = self.get(names[0])
        if bundle.manifest.task != task:
            raise BundleError(
                f"bundle {bundle.name} is for task {bundle.manifest.task!r}, not {task!r}"
            )
        overrides = entry.contours if entry is not None and entry.contours else {}
        try:
            contours = ContourParams.from_mapping({**bundle.manifest.contours, **overrides})
        except ValueError as exc:
            raise BundleError(f"model config {task}.{objective}.contours: {exc}") from None
        return Resolved(bundle=bundle, contours=contours, objective=objective)


def shipped_bundle(name: str) -> Bundle:
    """A bundle shipped with the package (e.g. "lymph-m")."""
    return Registry().get(name)


def resolve_bundle(spec: str) -> Bundle:
    """A bundle folder or .tar.gz path, or the name of a shipped bundle (e.g. "lymph-m")."""
    path_like = Path(spec).exists() or "/" in spec or spec.endswith((".tar.gz", ".tgz"))
    return load_bundle(spec) if path_like else shipped_bundle(spec)
