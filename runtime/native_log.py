"""Filter the INFO lines LiteRT/TFLite's C++ logger writes straight to file descriptor 2.

LiteRT prints e.g. "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on every
interpreter it builds and honours no environment variable for it. `quiet_native_info()` points fd 2
at a temporary file while an interpreter is built or allocated, then writes back every line that
is not such an INFO line. Nothing is filtered when the `lucida` logger is at DEBUG.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager

# TFLite's minimal logger: "INFO: ..." (severity prefix); warnings and errors pass through.
_INFO_LINE = re.compile(rb"^INFO: ")
_lock = threading.RLock()
_depth = 0


def _enabled() -> bool:
    return not logging.getLogger("lucida").isEnabledFor(logging.DEBUG)


@contextmanager
def quiet_native_info():
    """Run the body with native INFO lines on fd 2 dropped (re-entrant; other lines kept)."""
    global _depth
    if not _enabled():
        yield
        return
    with _lock:
        _depth += 1
        if _depth > 1:  # an outer call already captures fd 2
            try:
                yield
            finally:
                _depth -= 1
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        saved = os.dup(2)
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                try:
                    sys.stderr.flush()
                except (OSError, ValueError, AttributeError):
                    pass
                os.dup2(saved, 2)
                os.close(saved)
                _depth -= 1
                capture.seek(0)
                kept = [ln for ln in capture.read().splitlines(True) if not _INFO_LINE.match(ln)]
                if kept:
                    os.write(2, b"".join(kept))
