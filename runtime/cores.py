"""Which CPU cores the pipeline's threads run on.

When the model runs on the CPU, its interpreter's thread gets cores of its own (as many as the
interpreter has threads, leaving at least one) and the capture and render threads share the
rest: on 2 cores the scheduler otherwise preempted invokes for them about a tenth of the time,
and the loop fell short of what the model allows (`lucida bench pipeline`, throughput_ratio).
With an accelerator the inference thread mostly waits on the device, so no thread is pinned.
Linux only (os.sched_setaffinity); elsewhere nothing is pinned.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def allowed_cores() -> set[int]:
    """The cores this process may run on (a container's cpuset, taskset), or an empty set when
    the platform cannot pin threads."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set()


def split_cores(on_cpu: bool, model_threads: int, allowed: set[int]) -> dict[str, set[int]]:
    """Cores per thread role ("infer", "capture", "render"): the model's thread alone on the
    first `model_threads` allowed cores, the others on the rest; every role on every allowed
    core when the model is not on the CPU or the cores cannot be split."""
    cores = sorted(allowed)
    k = min(max(1, model_threads), len(cores) - 1)
    if not on_cpu or k < 1:
        return {role: set(cores) for role in ("infer", "capture", "render")}
    return {"infer": set(cores[:k]), "capture": set(cores[k:]), "render": set(cores[k:])}


def pin(native_id: int | None, cores: set[int]) -> bool:
    """Bind one thread (its native id) to `cores`; False when it could not be (gone, refused)."""
    if native_id is None or not cores:
        return False
    try:
        os.sched_setaffinity(native_id, cores)
    except (AttributeError, OSError) as exc:
        log.debug("thread %s not pinned to cores %s: %s", native_id, sorted(cores), exc)
        return False
    return True
