"""Which CPU cores the pipeline's threads run on.

When the model runs on the CPU, its interpreter's thread is bound to cores of its own (as many as
the interpreter has threads, leaving at least one): the scheduler then never moves an invoke
between cores, and the capture and render threads, which may run on every core, find the
others free. They are not bound themselves: under load from other programs a thread held to one
busy core starved the display for seconds (`lucida hil hostile` beside TensorFlow tests: display
gaps of 0.8-3.8 s), and the display must always be able to blank. With an accelerator the
inference thread mostly waits on the device, so nothing is bound. Linux only
(os.sched_setaffinity); elsewhere nothing is bound.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
ROLES = ("infer", "capture", "render")


def allowed_cores() -> set[int]:
    """The cores this process may run on (a container's cpuset, taskset), or an empty set when
    the platform cannot bind threads."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set()


def split_cores(on_cpu: bool, model_threads: int, allowed: set[int]) -> dict[str, set[int]]:
    """Cores per thread role ("infer", "capture", "render"): the model's thread on the first
    `model_threads` allowed cores (at least one core left to the others) when the model runs
    on the CPU; every other role, and every role otherwise, on every allowed core."""
    cores = sorted(allowed)
    k = min(max(1, model_threads), len(cores) - 1)
    plan = {role: set(cores) for role in ROLES}
    if on_cpu and k >= 1:
        plan["infer"] = set(cores[:k])
    return plan


def pin(native_id: int | None, cores: set[int]) -> bool:
    """Bind one thread (its native id) to `cores`; False when it could not be (gone, refused)."""
    if native_id is None or not cores:
        return False
    try:
        os.sched_setaffinity(native_id, cores)
    except (AttributeError, OSError) as exc:
        log.debug("thread %s not bound to cores %s: %s", native_id, sorted(cores), exc)
        return False
    return True
