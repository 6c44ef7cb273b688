"""Daemon builds for the HIL bench tests: `python tests/hil_shims.py MODE --config FILE`.

The bench runs these through `lucida hil --daemon-cmd` exactly as it runs the real daemon.

oracle       the model's heatmap is the virtual microscope's truth (0.15 outside tumour, 0.75
             inside): a perfect model, so the bench's accuracy checks pass or fail on the build,
             not on a model's skill; everything else (contours, safety, API) is the real code.
never_clear  oracle, and the display is never blanked (Pipeline.clear and Pipeline._blank do
             nothing): the safety rule broken.
health_lies  oracle, and Engine.health_check (in the daemon and in its sandbox child) always
             says ok: a bundle whose golden check fails is deployed instead of refused.
open_door    the daemon before issue 20's privacy rules: patient data served without the
             token, any Host header accepted (DNS rebinding).
motion_blind oracle, and the pipeline ignores the image's motion (it blanks only when the source
             says the stage moves, as before issue 13): with a real camera, never.
"""

from __future__ import annotations

import sys
import threading

import cv2
import numpy as np
from lucida.runtime import engine, pipeline
from lucida.runtime.frame import Heatmap

CELL = 8  # px per oracle heatmap cell
_local = threading.local()


def _oracle() -> None:
    process = pipeline.Pipeline._process

    def _process(self, frame, *args, **kw):
        _local.truth = frame.meta.get("truth_mask")
        return process(self, frame, *args, **kw)

    def infer_input(self, x):
        fw, fh = x.frame_size
        hw, hh = -(-fw // CELL), -(-fh // CELL)
        truth = getattr(_local, "truth", None)
        if truth is None or truth.shape != (fh, fw):
            frac = np.zeros((hh, hw), np.float32)
        else:
            frac = cv2.resize(truth.view(np.uint8).astype(np.float32), (hw, hh), cv2.INTER_AREA)
        sx, sy = fw / hw, fh / hh
        affine = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])
        return Heatmap(np.float32(0.15) + np.float32(0.6) * frac, affine, (fw, fh))

    pipeline.Pipeline._process = _process
    engine.Engine.infer_input = infer_input


def _never_clear() -> None:
    pipeline.Pipeline.clear = lambda self, reason: None
    pipeline.Pipeline._blank = lambda self, reason, frame=None: None


def _health_lies() -> None:
    from lucida.runtime import sandbox

    engine.Engine.health_check = lambda self, raise_on_fail=True: {"ok": True, "lies": True}
    # the golden check in the child process (issue 20) lies too
    sandbox.check_in_child = lambda *a, **k: {"ok": True, "lies": True}


def _open_door() -> None:
    from lucida.runtime import http_guard

    http_guard.private = lambda path: False
    http_guard.host_ok = lambda header, allowed, bind: True


def _motion_blind() -> None:
    pipeline.Pipeline._gate = lambda self, frame, resized=None: (
        "stage moving" if frame.moving else True
    )


MODES = {
    "oracle": [_oracle],
    "never_clear": [_oracle, _never_clear],
    "health_lies": [_oracle, _health_lies],
    "motion_blind": [_oracle, _motion_blind],
    "open_door": [_open_door],
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in MODES:
        print(f"usage: hil_shims.py {{{','.join(MODES)}}} --config FILE", file=sys.stderr)
        return 2
    for patch in MODES[argv[0]]:
        patch()
    from lucida.tools.cli import main as cli

    return cli(["run", *argv[1:]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
