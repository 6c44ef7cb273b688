"""What a device holds: `GET /models` and `lucida models --to URL`.

The bundles it can run (shipped, from models.dirs, deployed), which one each objective of the
nosepiece would use (None: no model there, nothing is drawn), and what runs now.
"""

from __future__ import annotations

from pathlib import Path

from lucida.models.bundle import MANIFEST, read_manifest
from lucida.models.registry import SHIPPED_DIR


def describe(folder: Path, where: str) -> dict:
    """One bundle as a person reads it: name, version, task, objectives, files, where it is."""
    m = read_manifest(folder)
    cpu = m.files.get("cpu.tflite")
    return {
        "name": m.name,
        "version": m.version,
        "task": m.task,
        "objectives": list(m.objectives),
        "edgetpu": "edgetpu.tflite" in m.files,
        "sha256": cpu.sha256 if cpu else None,
        "where": where,
    }


def inventory(selector, store, objectives, running: dict | None = None) -> dict:
    """{task, tasks: {task: {objective: bundle name or None}}, running, objectives (the task
    running now's), bundles: [...], deployed}.

    selector: runtime.models.ModelSelector; store: runtime.store.BundleStore (None on a host);
    objectives: the ones the microscope can show (nosepiece positions and the source's).
    """
    bundles = []
    if selector.registry is not None:
        for _name, (folder, _) in sorted(selector.registry.manifests().items()):
            shipped = Path(folder).resolve().parent == SHIPPED_DIR.resolve()
            bundles.append(describe(Path(folder), "shipped" if shipped else "models.dirs"))
    if store is not None and store.bundles.is_dir():
        for folder in sorted(p for p in store.bundles.iterdir() if (p / MANIFEST).is_file()):
            bundles.append(describe(folder, "deployed"))
    ordered = sorted(objectives, key=_magnification)
    tasks = {}  # every task: the bundle each objective would use for it
    for task in selector.tasks():
        found = ((obj, selector.bundle_for(obj, task)) for obj in ordered)
        tasks[task] = {obj: _bundle_name(b) for obj, b in found}
    return {
        "task": selector.task,
        "tasks": tasks,
        "running": running or {},
        "objectives": {obj: _bundle_name(selector.bundle_for(obj)) for obj in ordered},
        "bundles": bundles,
        "deployed": store.state() if store is not None else {},
    }


def _bundle_name(bundle) -> str | None:
    return bundle.name if bundle is not None else None


def _magnification(objective: str) -> float:
    try:
        return float(str(objective).rstrip("xX"))
    except ValueError:
        return float("inf")
