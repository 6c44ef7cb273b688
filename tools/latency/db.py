"""The latency database (SQLite): measured latency per (model sha256, target, backend), so nothing
is measured twice, plus what is known about each model (features, candidate spec), pipeline
overheads per target, and fitted latency predictors (JSON, no pickle).

target: where it ran and how it was clocked, e.g. "local/x86_64/intel-xeon-processor-2-80ghz/t1/cpu"
(this machine's CPU, 1 interpreter thread, thread CPU time) or "http://10.0.0.7:8080" (a device's
daemon, wall time).
backend: "<interpreter>-<version>/<delegate>", e.g. "ai_edge_litert-2.3.0/cpu".
All latencies in ms, per interpreter invoke (one tile).
"""

from __future__ import annotations

import json
import os
import platform
import re
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_DB = Path("build") / "latency.sqlite"
ENV_DB = "LUCIDA_LATENCY_DB"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,          -- 'bundle' | 'candidate' | 'model' | 'kernel' | 'zoo'
    seed INTEGER,                -- candidates: the seed their architecture was drawn from
    spec TEXT,                   -- candidates: JSON of the architecture
    features TEXT,               -- JSON of predictor features (per-op rows and totals)
    metrics TEXT,                -- bundles: JSON of the manifest's metrics
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS latency (
    sha256 TEXT NOT NULL,
    target TEXT NOT NULL,
    backend TEXT NOT NULL,
    delegate TEXT NOT NULL,
    threads INTEGER,
    clock TEXT,                  -- 'cpu' (thread CPU time) or 'wall'
    wall_p50_ms REAL,            -- cpu clock: the wall-clock p50 of the same runs, for reference
    scale REAL,                  -- host speed vs the target's scale: raw figures = stored x scale
    anchors INTEGER,             -- known models re-timed alongside to find that scale
    p50_ms REAL NOT NULL,
    p90_ms REAL NOT NULL,
    p99_ms REAL NOT NULL,
    runs INTEGER NOT NULL,
    windows INTEGER,
    seconds REAL,
    host TEXT,
    machine TEXT,
    versions TEXT,
    load1 REAL,
    command TEXT,
    measured_at REAL NOT NULL,
    PRIMARY KEY (sha256, target, backend)
);
CREATE TABLE IF NOT EXISTS overhead (
    target TEXT PRIMARY KEY,
    capture_ms REAL NOT NULL,
    render_ms REAL NOT NULL,
    source TEXT,
    measured_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS kernel_predictors (
    target TEXT NOT NULL,        -- kernel-level predictors (kernel_model), fitted on sampled kernels
    backend TEXT NOT NULL,
    json TEXT NOT NULL,
    fitted_at REAL NOT NULL,
    PRIMARY KEY (target, backend)
);
CREATE TABLE IF NOT EXISTS predictors (
    target TEXT NOT NULL,
    backend TEXT NOT NULL,
    json TEXT NOT NULL,
    fitted_at REAL NOT NULL,
    PRIMARY KEY (target, backend)
);
"""


class LatencyDBError(ValueError):
    """The database file is not a latency database, or a lookup names nothing known."""


@dataclass
class Measurement:
    """One measured latency of one model on one target (ms per invoke)."""

    sha256: str
    target: str
    backend: str
    delegate: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    runs: int
    threads: int | None = None
    clock: str = "wall"
    wall_p50_ms: float | None = None
    scale: float = 1.0
    anchors: int = 0
    windows: int | None = None
    seconds: float | None = None
    host: str = ""
    machine: str = ""
    versions: dict = field(default_factory=dict)
    load1: float | None = None
    command: str = ""
    measured_at: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def cpu_model() -> str:
    """This machine's CPU model name (from /proc/cpuinfo; platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


def default_clock(threads: int) -> str:
    """'cpu' (the invoking thread's CPU time) with one thread, else 'wall'."""
    return "cpu" if int(threads) == 1 else "wall"


def local_target(threads: int, clock: str | None = None) -> str:
    """This machine's CPU as a target key: local/<arch>/<cpu model>/t<threads>/<clock>.

    The host name is left out on purpose (containers get a new one per boot); it is stored with
    each measurement instead. clock: 'cpu' or 'wall' (see profile_cmd).
    """
    clock = clock or default_clock(threads)
    if clock not in ("cpu", "wall"):
        raise LatencyDBError(f"clock {clock!r}: expected 'cpu' or 'wall'")
    if clock == "cpu" and int(threads) != 1:
        raise LatencyDBError("the cpu clock measures one thread: use it with --threads 1")
    return f"local/{platform.machine()}/{_slug(cpu_model())}/t{int(threads)}/{clock}"


def resolve_target(spec: str | None, threads: int = 1, clock: str | None = None) -> str:
    """'local' -> local_target(threads, clock); an http:// URL -> the URL without a trailing
    slash; anything else (a full key from the DB) unchanged."""
    if spec in ("local", "", None):
        return local_target(threads, clock)
    if spec.startswith(("http://", "https://")):
        return spec.rstrip("/")
    return spec


class LatencyDB:
    """A latency database file; opened per use (`with LatencyDB(path) as db:`)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path or os.environ.get(ENV_DB) or DEFAULT_DB)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=30)
            self.conn.row_factory = sqlite3.Row
            self.conn.executescript(_SCHEMA)
            self._add_missing_columns()
        except sqlite3.DatabaseError as exc:
            raise LatencyDBError(f"{self.path}: not a latency database ({exc})") from None

    def _add_missing_columns(self) -> None:
        """Columns added after a database file was created (older files keep working)."""
        have = {r["name"] for r in self.conn.execute("PRAGMA table_info(latency)")}
        for name, decl in (
            ("clock", "TEXT"),
            ("wall_p50_ms", "REAL"),
            ("scale", "REAL"),
            ("anchors", "INTEGER"),
        ):
            if name not in have:
                with self.conn:
                    self.conn.execute(f"ALTER TABLE latency ADD COLUMN {name} {decl}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> LatencyDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- models ----------------------------------------------------------------------------------
    def add_model(
        self,
        sha256: str,
        name: str,
        path: str,
        kind: str = "model",
        seed: int | None = None,
        spec: dict | None = None,
        features: dict | None = None,
        metrics: dict | None = None,
    ) -> None:
        """Record (or update) what a model is; existing features are kept when none are given."""
        old = self.model(sha256)
        if old is not None:
            features = features if features is not None else old.get("features")
            spec = spec if spec is not None else old.get("spec")
            seed = seed if seed is not None else old.get("seed")
            metrics = metrics if metrics is not None else old.get("metrics")
            if old["kind"] == "candidate":
                kind = "candidate"
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO models VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    sha256,
                    name,
                    str(path),
                    kind,
                    seed,
                    json.dumps(spec) if spec is not None else None,
                    json.dumps(features) if features is not None else None,
                    json.dumps(metrics) if metrics is not None else None,
                    time.time(),
                ),
            )

    def model(self, sha256: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM models WHERE sha256 = ?", (sha256,)).fetchone()
        return _model_row(row) if row else None

    # -- latency ---------------------------------------------------------------------------------
    def put(self, m: Measurement) -> None:
        """Store a measurement (replacing one with the same sha256, target and backend)."""
        m.measured_at = m.measured_at or time.time()
        d = m.to_dict()
        d["versions"] = json.dumps(d["versions"])
        cols = ", ".join(d)
        marks = ", ".join("?" for _ in d)
        with self.conn:
            self.conn.execute(
                f"INSERT OR REPLACE INTO latency ({cols}) VALUES ({marks})", tuple(d.values())
            )

    def get(self, sha256: str, target: str, backend: str | None = None) -> Measurement | None:
        """The measurement of this model on this target (any backend when backend is None;
        the newest one then)."""
        q = "SELECT * FROM latency WHERE sha256 = ? AND target = ?"
        args: tuple = (sha256, target)
        if backend is not None:
            q += " AND backend = ?"
            args += (backend,)
        row = self.conn.execute(q + " ORDER BY measured_at DESC LIMIT 1", args).fetchone()
        return _measurement(row) if row else None

    def on_delegate(self, sha256: str, delegate_prefix: str) -> Measurement | None:
        """The newest measurement of this model on any target whose delegate starts with the
        prefix (e.g. 'edgetpu': an Edge TPU device profiled through its daemon)."""
        row = self.conn.execute(
            "SELECT * FROM latency WHERE sha256 = ? AND delegate LIKE ? "
            "ORDER BY measured_at DESC LIMIT 1",
            (sha256, delegate_prefix + "%"),
        ).fetchone()
        return _measurement(row) if row else None

    def measurements(self, target: str, kind: str | None = None) -> list[tuple[dict, Measurement]]:
        """(model, measurement) pairs on a target, optionally only models of one kind."""
        q = "SELECT m.*, l.* FROM latency l JOIN models m ON m.sha256 = l.sha256 WHERE l.target = ?"
        args: tuple = (target,)
        if kind is not None:
            q += " AND m.kind = ?"
            args += (kind,)
        out = []
        for row in self.conn.execute(q + " ORDER BY m.name", args).fetchall():
            out.append((_model_row(row), _measurement(row)))
        return out

    def targets(self) -> list[tuple[str, int]]:
        """Known targets and how many models each has measured."""
        rows = self.conn.execute(
            "SELECT target, COUNT(*) AS n FROM latency GROUP BY target ORDER BY n DESC"
        ).fetchall()
        return [(r["target"], r["n"]) for r in rows]

    # -- pipeline overhead -----------------------------------------------------------------------
    def put_overhead(self, target: str, capture_ms: float, render_ms: float, source: str) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO overhead VALUES (?,?,?,?,?)",
                (target, float(capture_ms), float(render_ms), source, time.time()),
            )

    def overhead(self, target: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM overhead WHERE target = ?", (target,)).fetchone()
        return dict(row) if row else None

    # -- predictors ------------------------------------------------------------------------------
    def put_predictor(self, target: str, backend: str, predictor: dict) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO predictors VALUES (?,?,?,?)",
                (target, backend, json.dumps(predictor), time.time()),
            )

    def predictor(self, target: str, backend: str | None = None) -> dict | None:
        q, args = "SELECT json FROM predictors WHERE target = ?", (target,)
        if backend is not None:
            q, args = q + " AND backend = ?", (target, backend)
        row = self.conn.execute(q + " ORDER BY fitted_at DESC LIMIT 1", args).fetchone()
        return json.loads(row["json"]) if row else None

    def put_kernel_predictor(self, target: str, backend: str, predictor: dict) -> None:
        """Store the kernel-level predictor (see kernel_model) of a target."""
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO kernel_predictors VALUES (?,?,?,?)",
                (target, backend, json.dumps(predictor), time.time()),
            )

    def kernel_predictor(self, target: str) -> dict | None:
        row = self.conn.execute(
            "SELECT json FROM kernel_predictors WHERE target = ? ORDER BY fitted_at DESC LIMIT 1",
            (target,),
        ).fetchone()
        return json.loads(row["json"]) if row else None


def _model_row(row) -> dict:
    d = {k: row[k] for k in ("sha256", "name", "path", "kind", "seed")}
    for k in ("spec", "features", "metrics"):
        d[k] = json.loads(row[k]) if row[k] else None
    return d


def _measurement(row) -> Measurement:
    keys = Measurement.__dataclass_fields__
    d = {k: row[k] for k in keys}
    d["versions"] = json.loads(d["versions"] or "{}")
    d["clock"] = d["clock"] or "wall"
    d["scale"] = d["scale"] if d["scale"] is not None else 1.0
    d["anchors"] = d["anchors"] or 0
    return Measurement(**d)


def add_target_arguments(p) -> None:
    """The --target/--threads/--clock/--db flags that `lucida predict` and `select` share."""
    p.add_argument(
        "--target",
        default="local",
        help="'local', http://DEVICE:PORT, a DB key, or an Edge TPU target (coral-usb3/x86_64, "
        "coral-usb/rpi4, coral-usb2/rpi3, coral-pcie/devboard: estimated)",
    )
    p.add_argument("--threads", type=int, default=1, help="local: interpreter threads (1)")
    p.add_argument("--clock", choices=("cpu", "wall"), default=None, help="local: clock")
    p.add_argument("--db", default=None, help="latency database (build/latency.sqlite)")
