"""Interpreter backends: ai_edge_litert (LiteRT) -> tflite_runtime -> tensorflow.lite.

The first that imports wins unless one is asked for by name (argument or LUCIDA_BACKEND).
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable

from .native_log import quiet_native_info

log = logging.getLogger(__name__)

# (backend name, module holding Interpreter/load_delegate, distribution for the version)
BACKEND_ORDER = (
    ("ai_edge_litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime", "tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow", "tensorflow", "tensorflow"),
)


class BackendError(ValueError):
    """No usable interpreter backend (or the one asked for is missing)."""


@dataclass(frozen=True)
class Backend:
    """An interpreter implementation: its name, version, Interpreter class and load_delegate."""

    name: str
    version: str
    Interpreter: Any
    load_delegate: Callable[..., Any]


def _version(dist: str, module: Any) -> str:
    for d in (dist, dist.replace("-cpu", ""), "tensorflow-cpu"):
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return str(getattr(module, "__version__", "unknown"))


def _quiet(cls: type) -> type:
    """`cls` with its native INFO lines (e.g. "Created ... XNNPACK delegate") filtered."""

    class Interpreter(cls):
        def __init__(self, *args, **kwargs):
            with quiet_native_info():
                super().__init__(*args, **kwargs)

        def allocate_tensors(self):
            with quiet_native_info():
                return super().allocate_tensors()

    Interpreter.__qualname__ = f"Quiet{cls.__name__}"
    Interpreter.__module__ = cls.__module__  # the engine finds OpResolverType beside the class
    return Interpreter


def _import(name: str, module_name: str, dist: str) -> Backend:
    mod = importlib.import_module(module_name)
    if name == "tensorflow":
        lite = mod.lite
        return Backend(
            name, _version(dist, mod), _quiet(lite.Interpreter), lite.experimental.load_delegate
        )
    return Backend(name, _version(dist, mod), _quiet(mod.Interpreter), mod.load_delegate)


def select_backend(preferred: str | None = None) -> Backend:
    """The backend asked for, or the first importable one in BACKEND_ORDER."""
    preferred = preferred or os.environ.get("LUCIDA_BACKEND") or None
    names = [b[0] for b in BACKEND_ORDER]
    if preferred and preferred not in names:
        raise BackendError(f"unknown backend {preferred!r}; choose one of {', '.join(names)}")
    errors = []
    for name, module_name, dist in BACKEND_ORDER:
        if preferred and name != preferred:
            continue
        try:
            backend = _import(name, module_name, dist)
        except Exception as exc:  # ImportError, or a broken wheel failing at import
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        log.info("interpreter backend %s %s", backend.name, backend.version)
        return backend
    raise BackendError(
        "no TFLite interpreter: install ai-edge-litert (Python >= 3.10) or tflite-runtime "
        "(with numpy<2); tried " + "; ".join(errors)
    )
