"""Edge TPU discovery and delegate loading, with the reasons it can fail spelled out.

pycoral (Coral's own package, not the unrelated one on PyPI) is used for discovery when importable;
otherwise devices are found by probing the delegate with `usb:N` / `pci:N` device specs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from dataclasses import dataclass

from .backends import Backend
from .retry import Backoff

log = logging.getLogger(__name__)

DEFAULT_LIBRARY = {
    "Linux": "libedgetpu.so.1",
    "Darwin": "libedgetpu.1.dylib",
    "Windows": "edgetpu.dll",
}.get(platform.system(), "libedgetpu.so.1")


class DelegateError(RuntimeError):
    """The Edge TPU delegate could not be loaded; `reason` is one of missing-library/no-device/failed."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class EdgeTpu:
    """One Edge TPU: its device spec for the delegate ("usb:0", "pci:0") and where it was found."""

    spec: str
    path: str = ""


def library_path() -> str:
    """The libedgetpu to load: LUCIDA_EDGETPU_LIB if set, else the platform's default name."""
    return os.environ.get("LUCIDA_EDGETPU_LIB") or DEFAULT_LIBRARY


def _classify(exc: Exception) -> str:
    text = str(exc).lower()
    if isinstance(exc, OSError) or "cannot open shared object" in text or "no such file" in text:
        return "missing-library"
    if "failed to load delegate" in text:
        return "no-device"
    return "failed"


def load_edgetpu_delegate(
    backend: Backend,
    device: str | None = None,
    options: dict | None = None,
    attempts: int = 3,
    retry_delay_s: float = 0.5,
):
    """Load the Edge TPU delegate for `device` (None: the library picks), retrying.

    A USB Accelerator re-enumerates (changes USB id) the first time it is opened, so the first
    attempt can fail on a healthy device; later attempts find it under its new id.
    """
    lib = library_path()
    opts = dict(options or {})
    if device:
        opts["device"] = device
    last: Exception | None = None
    try:  # a missing library is found here, before the interpreter's Delegate half-constructs
        ctypes.CDLL(lib)
    except OSError as exc:
        last, attempts = exc, 0
    backoff = Backoff(retry_delay_s)
    for attempt in range(1, attempts + 1):
        try:
            delegate = backend.load_delegate(lib, opts)
            log.info("Edge TPU delegate %s loaded (%s, attempt %d)", lib, device or "any", attempt)
            return delegate
        except (ValueError, OSError, RuntimeError) as exc:
            last = exc
            if _classify(exc) == "missing-library":
                break
            if attempt < attempts:
                backoff.wait()
    reason = _classify(last) if last else "failed"
    hint = {
        "missing-library": "libedgetpu is not installed or not on the library path",
        "no-device": f"no Edge TPU answered at {device or 'any device'}",
        "failed": "the delegate failed to initialise",
    }[reason]
    raise DelegateError(
        f"Edge TPU delegate unavailable: {hint} (library {lib}, interpreter {backend.name} "
        f"{backend.version}; libedgetpu must be built for the same TensorFlow version): {last}",
        reason,
    )


def list_edge_tpus(backend: Backend, max_per_type: int = 4) -> list[EdgeTpu]:
    """Edge TPUs on this machine: from pycoral if importable, else by probing device specs."""
    try:
        from pycoral.utils.edgetpu import list_edge_tpus as _pycoral_list  # Coral's own package
    except Exception:
        _pycoral_list = None
    if _pycoral_list is not None:
        found, counts = [], {}
        for d in _pycoral_list():
            kind = d.get("type", "usb")
            n = counts.get(kind, 0)
            counts[kind] = n + 1
            found.append(EdgeTpu(spec=f"{kind}:{n}", path=d.get("path", "")))
        return found
    found = []
    for kind in ("usb", "pci"):
        for n in range(max_per_type):
            spec = f"{kind}:{n}"
            try:
                delegate = load_edgetpu_delegate(backend, spec, attempts=1)
            except DelegateError as exc:
                if exc.reason == "missing-library":
                    return []
                break
            del delegate
            found.append(EdgeTpu(spec=spec))
    return found
