"""The run store: one SQLite file holding runs and their predictions.

Why SQLite: a run over 50k images takes hours and may be killed at any moment (OOM killer, a
preempted job, Ctrl-C). The store is in WAL mode and every batch of predictions is one
transaction, so a SIGKILL loses at most the batch in flight and never corrupts what was
committed; a resumed run asks ``done_ids`` and skips those examples. Readers (reports, a second
terminal) can read while a writer runs.

Floats round-trip exactly: REAL columns hold IEEE doubles and JSON holds ``repr`` of Python
floats. JSON cannot hold NaN or infinities, so wherever this module writes JSON (``scores_json``,
``extra_json``, ``meta_json`` and the JSONL export) a non-finite float is written as the object
``{"$float": "nan"}`` / ``{"$float": "inf"}`` / ``{"$float": "-inf"}`` and read back as the float;
``None`` stays ``null`` (for scores: "not scored"). A NaN ``seconds`` is stored by SQLite as NULL
and read back as NaN.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from vlmclf.records import ANSWER_FLAGS, OUTCOMES, Prediction

SCHEMA_VERSION = 3
APPLICATION_ID = 0x766C6D63  # "vlmc": marks an SQLite file as a vlmclf store
RUN_STATUSES = ("running", "done", "failed", "interrupted")
INCOMPLETE = "incomplete"
"""Read-only status: a run that finished with transient failures left, which the next run of the
same command retries. Stored as 'done' (the column's CHECK predates it) and derived on reading."""
FINAL_STATUSES = ("done", "failed", "interrupted")

_SCHEMA_V1 = """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    spec_json TEXT NOT NULL,
    class_names_json TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
    n_total INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    elapsed_s REAL NOT NULL DEFAULT 0,
    meta_json TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE predictions (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    example_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    label INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    error TEXT,
    text TEXT,
    scores_json TEXT,
    choices_json TEXT,
    pred INTEGER,
    hit INTEGER,
    seconds REAL,
    extra_json TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, example_id)
);
CREATE INDEX predictions_by_seq ON predictions (run_id, seq);
"""

# Analyses (probe, sweep, frequency, ...) keep their spec and result as JSON, one row each.
_SCHEMA_V2 = """
CREATE TABLE analyses (
    analysis_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    result_json TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""

# Outcome kinds and content identities. A v2 failure cannot say whether it was the data's or the
# machine's, so it stays a data failure (done, as it was); v2 runs keep their spec-hash ids and a
# NULL identity, and new runs are keyed by a content hash, so they never match a v2 run.
_SCHEMA_V3 = """
ALTER TABLE predictions ADD COLUMN outcome TEXT NOT NULL DEFAULT 'answer';
UPDATE predictions SET outcome = 'data_failure' WHERE ok = 0;
ALTER TABLE predictions ADD COLUMN flag TEXT;
ALTER TABLE runs ADD COLUMN identity_json TEXT;
"""

# Migrations from version v to v+1, applied in order when an older store is opened.
_MIGRATIONS: dict[int, str] = {0: _SCHEMA_V1, 1: _SCHEMA_V2, 2: _SCHEMA_V3}

_PRED_COLUMNS = (
    "example_id, label, ok, error, text, scores_json, choices_json, pred, hit, seconds, extra_json,"
    " outcome, flag"
)
# A stored answer is final; a transient failure is replaced by whatever the retry gives, and a
# data failure by an answer (``--retry-failed``).
_REPLACE_FAILURE = ", ".join(
    f"{c.strip()} = excluded.{c.strip()}" for c in _PRED_COLUMNS.split(",")[1:]
)


SQLITE_FULL = 13
SQLITE_READONLY = 8
SQLITE_IOERR = 10
LOW_DISK_BYTES = 1 << 20
_TABLES_BY_VERSION = {
    1: ("runs", "predictions"),
    2: ("runs", "predictions", "analyses"),
    3: ("runs", "predictions", "analyses"),
}


class StoreError(RuntimeError):
    """The file is not a usable vlmclf store (not SQLite, corrupt, foreign or newer schema,
    damaged, read-only for a write, or the disk is full). The message is one line naming the
    file; ``disk_full`` tells a runner that committed rows are safe and the run can resume."""

    def __init__(self, message: str, *, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


class StoreMissingError(StoreError, FileNotFoundError):
    """No store at the path, and the caller asked not to create one (``results``, ``export``)."""


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs`` with its JSON parsed and its prediction counts."""

    run_id: str
    spec: dict[str, Any]
    spec_json: str
    class_names: list[str]
    status: str
    n_total: int
    n_done: int
    n_failed: int
    created_at: str
    updated_at: str
    elapsed_s: float
    meta: dict[str, Any] = field(default_factory=dict)
    n_transient: int = 0
    identity: dict[str, Any] | None = None
    """What the run id hashes (see ``vlmclf.identity``); None for a run stored before schema 3."""


@dataclass(frozen=True)
class AnalysisRecord:
    """One stored analysis (probe, sweep, frequency, finetune, wikiqa, rematch)."""

    analysis_id: str
    kind: str
    spec: dict[str, Any]
    result: dict[str, Any]
    created_at: str


def to_json_safe(obj: Any) -> Any:
    """Plain JSON values; non-finite floats tagged, numpy scalars/arrays made Python."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        return {"$float": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
    if isinstance(obj, dict):
        return {k: to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return to_json_safe(obj.tolist())
    raise TypeError(f"cannot store {type(obj).__name__} as JSON: {obj!r:.80}")


def from_json_safe(obj: Any) -> Any:
    """Inverse of :func:`to_json_safe`."""
    if isinstance(obj, dict):
        if len(obj) == 1 and isinstance(obj.get("$float"), str):
            return float(obj["$float"])
        return {k: from_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json_safe(v) for v in obj]
    return obj


def _dumps(obj: Any) -> str:
    try:  # fast path: plain finite values (most rows); the walk below costs a call per value
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(to_json_safe(obj), separators=(",", ":"), allow_nan=False)


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    value = json.loads(text)
    return from_json_safe(value) if '"$float"' in text else value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class RunStore:
    """A vlmclf run store in one SQLite file. Use as a context manager or call ``close()``."""

    def __init__(
        self,
        path: str | Path,
        *,
        create: bool = True,
        read_only: bool = False,
        timeout_s: float = 30.0,
    ) -> None:
        """Open (or, unless ``create`` is False or ``read_only``, create) the store at ``path``.

        ``read_only`` never writes: no schema upgrade, no journal change, so ``results`` and
        ``export`` work on a store on a read-only filesystem, and a mistyped path is an error
        instead of a new empty store.
        """
        self.path = Path(path)
        self.read_only = read_only
        if not self.path.exists():
            if read_only or not create:
                raise StoreMissingError(f"{self.path}: no vlmclf store at this path")
            self._make_parent()
        elif not self.path.is_file():
            raise StoreError(f"{self.path}: is not a file, so not a vlmclf store")
        elif not read_only and not _writable(self.path):
            raise StoreError(
                f"{self.path}: the store is read-only here (its file or folder cannot be "
                "written); `results` and `export` can read it, use another --store to run"
            )
        self._lock = threading.RLock()
        self._class_counts: dict[str, int] = {}
        try:
            self._conn = self._connect(timeout_s)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot open as a vlmclf store: {e}") from e
        try:
            self._open(timeout_s)
        except BaseException:
            self._conn.close()
            raise

    def _make_parent(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{self.path}: cannot create the store's folder: {e}") from e

    def _connect(self, timeout_s: float) -> sqlite3.Connection:
        options = dict(timeout=timeout_s, isolation_level=None, check_same_thread=False)
        if not self.read_only:
            return sqlite3.connect(self.path, **options)
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, **options)
        try:  # a WAL store in a read-only folder has no -shm to map: read it as immutable
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            conn.close()
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?immutable=1", uri=True, **options
            )
        return conn

    # ----- opening and schema -------------------------------------------------------------
    def _open(self, timeout_s: float) -> None:
        with self._guard():
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            n_tables = self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != APPLICATION_ID and (app_id != 0 or n_tables or version):
            raise StoreError(f"{self.path}: SQLite file is not a vlmclf store")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: store schema version {version} is newer than this vlmclf "
                f"understands ({SCHEMA_VERSION}); upgrade vlmclf"
            )
        if self.read_only:
            if version == 0:
                raise StoreError(f"{self.path}: empty SQLite file, not a vlmclf store")
            self._check_tables(version)
            return
        with self._guard():
            if self._conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
        if version < SCHEMA_VERSION:
            self._migrate()
        self._check_tables(SCHEMA_VERSION)

    def _check_tables(self, version: int) -> None:
        """A store whose tables were dropped is damaged; say so once, at open."""
        wanted = _TABLES_BY_VERSION.get(version, _TABLES_BY_VERSION[SCHEMA_VERSION])
        present = {r[0] for r in self._query("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = [t for t in wanted if t not in present]
        if missing:
            raise StoreError(
                f"{self.path}: damaged vlmclf store, table(s) {', '.join(missing)} missing"
            )

    def _migrate(self) -> None:
        with self._transaction() as conn:
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                version += 1
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn SQLite errors into StoreError naming the file (and what to do, where known)."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            raise _store_error(self.path, e) from e

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front (no deadlock)."""
        with self._lock, self._guard():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # SQLite itself rolls back after a full disk
                    self._conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock, self._guard():
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- runs ---------------------------------------------------------------------------
    def start_run(
        self,
        run_id: str,
        spec_json: str,
        class_names: list[str],
        n_total: int,
        identity: dict[str, Any] | None = None,
    ) -> None:
        """Create the run, or mark an existing one running again; predictions are kept.
        ``identity`` is what the id hashes, kept so that `results` can show it."""
        try:
            if not isinstance(json.loads(spec_json), dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise ValueError(f"run {run_id}: spec_json is not a JSON object: {e}") from e
        names = [str(n) for n in class_names]
        now = _now()
        identity_json = None if identity is None else _dumps(identity)
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT class_names_json FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO runs (run_id, spec_json, class_names_json, status, n_total,"
                    " created_at, updated_at, identity_json)"
                    " VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
                    (run_id, spec_json, json.dumps(names), int(n_total), now, now, identity_json),
                )
            elif json.loads(row[0]) != names:
                raise ValueError(
                    f"run {run_id} in {self.path} was stored with a different class-name list; "
                    "its predictions index that list (delete the run to start over)"
                )
            else:
                conn.execute(
                    "UPDATE runs SET status = 'running', n_total = ?, spec_json = ?,"
                    " updated_at = ?, identity_json = coalesce(?, identity_json) WHERE run_id = ?",
                    (int(n_total), spec_json, now, identity_json, run_id),
                )
        self._class_counts[run_id] = len(names)

    def finish_run(
        self, run_id: str, status: str, elapsed_s: float, meta: dict[str, Any] | None = None
    ) -> None:
        """Record the end of one session of a run. Elapsed time adds up across resumes; ``meta``
        keys are merged into the stored meta (new values win)."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"finish_run status must be one of {FINAL_STATUSES}, not {status!r}")
        with self._transaction() as conn:
            row = conn.execute("SELECT meta_json FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(f"no run {run_id!r} in {self.path}")
            merged = {**_loads(row[0]), **(meta or {})}
            conn.execute(
                "UPDATE runs SET status = ?, elapsed_s = elapsed_s + ?, meta_json = ?,"
                " updated_at = ? WHERE run_id = ?",
                (status, float(elapsed_s), _dumps(merged), _now(), run_id),
            )

    def get_run(self, run_id: str) -> RunRecord | None:
        records = self._run_records("WHERE r.run_id = ?", (run_id,))
        return records[0] if records else None

    def list_runs(self) -> list[RunRecord]:
        """All runs, oldest first."""
        return self._run_records("", ())

    def _run_records(self, where: str, params: tuple[Any, ...]) -> list[RunRecord]:
        rows = self._query(
            "SELECT r.run_id, r.spec_json, r.class_names_json, r.status, r.n_total,"
            " (SELECT count(*) FROM predictions p WHERE p.run_id = r.run_id),"
            " (SELECT count(*) FROM predictions p WHERE p.run_id = r.run_id AND p.ok = 0),"
            " r.created_at, r.updated_at, r.elapsed_s, r.meta_json,"
            " (SELECT count(*) FROM predictions p WHERE p.run_id = r.run_id"
            "  AND p.outcome = 'transient_failure'), r.identity_json"
            f" FROM runs r {where} ORDER BY r.created_at, r.run_id",
            params,
        )
        # Columns are in RunRecord's field order; spec and class names are parsed.
        return [
            RunRecord(r[0], json.loads(r[1]), r[1], json.loads(r[2]),
                      INCOMPLETE if r[3] == "done" and r[11] else r[3], *r[4:10], _loads(r[10]),
                      r[11], _loads(r[12]))
            for r in rows
        ]  # fmt: skip

    def delete_run(self, run_id: str) -> None:
        """Remove the run and all its predictions (a no-op for an unknown run)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM predictions WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
        self._class_counts.pop(run_id, None)

    # ----- analyses -----------------------------------------------------------------------
    def save_analysis(self, kind: str, spec: dict[str, Any], result: dict[str, Any]) -> str:
        """Store (or replace) an analysis result; its id is a hash of the kind and the spec."""
        spec_json = json.dumps(to_json_safe(spec), sort_keys=True)
        analysis_id = hashlib.sha256(f"{kind}\n{spec_json}".encode()).hexdigest()[:16]
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO analyses VALUES (?, ?, ?, ?, ?)",
                (analysis_id, kind, spec_json, _dumps(result), _now()),
            )
        return analysis_id

    def get_analysis(self, analysis_id: str) -> AnalysisRecord | None:
        found = self._analysis_records("WHERE analysis_id = ?", (analysis_id,))
        return found[0] if found else None

    def list_analyses(self, kind: str | None = None) -> list[AnalysisRecord]:
        """Stored analyses, oldest first, of one kind or all."""
        if kind is None:
            return self._analysis_records("", ())
        return self._analysis_records("WHERE kind = ?", (kind,))

    def _analysis_records(self, where: str, params: tuple[Any, ...]) -> list[AnalysisRecord]:
        rows = self._query(
            "SELECT analysis_id, kind, spec_json, result_json, created_at FROM analyses"
            f" {where} ORDER BY created_at, analysis_id",
            params,
        )
        return [AnalysisRecord(r[0], r[1], _loads(r[2]), _loads(r[3]), r[4]) for r in rows]

    # ----- predictions --------------------------------------------------------------------
    def done_ids(self, run_id: str, retry_data_failures: bool = False) -> set[str]:
        """Ids of examples the run need not ask again: answers and data failures (these too are
        asked again with ``retry_data_failures``); transient failures are never done."""
        final = "('answer')" if retry_data_failures else "('answer', 'data_failure')"
        rows = self._query(
            f"SELECT example_id FROM predictions WHERE run_id = ? AND outcome IN {final}",
            (run_id,),
        )
        return {r[0] for r in rows}

    def add_predictions(self, run_id: str, preds: Iterable[Prediction]) -> int:
        """Store a batch in one transaction. A stored answer is kept (the new record ignored);
        a stored transient failure is replaced by the new record, a data failure only by an
        answer; a replaced row keeps its place in the order.

        Returns the number of rows inserted or replaced. ``seq`` numbers rows in arrival order.
        """
        n_classes = self._n_classes(run_id)
        rows = [_prediction_row(p, n_classes) for p in preds]
        inserted = 0
        with self._transaction() as conn:
            seq = conn.execute(
                "SELECT coalesce(max(seq), -1) + 1 FROM predictions WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
            for row in rows:
                cur = conn.execute(
                    f"INSERT INTO predictions (run_id, seq, {_PRED_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    f" ON CONFLICT (run_id, example_id) DO UPDATE SET {_REPLACE_FAILURE}"
                    " WHERE predictions.outcome = 'transient_failure' OR (excluded.outcome ="
                    " 'answer' AND predictions.outcome != 'answer')",
                    (run_id, seq + inserted, *row),
                )
                inserted += cur.rowcount
        return inserted

    def predictions(self, run_id: str) -> list[Prediction]:
        """The run's predictions in arrival order."""
        rows = self._query(
            f"SELECT {_PRED_COLUMNS} FROM predictions WHERE run_id = ? ORDER BY seq", (run_id,)
        )
        return [_row_prediction(r) for r in rows]

    def _n_classes(self, run_id: str) -> int:
        if run_id not in self._class_counts:
            rows = self._query("SELECT class_names_json FROM runs WHERE run_id = ?", (run_id,))
            if not rows:
                raise KeyError(f"no run {run_id!r} in {self.path}; call start_run first")
            self._class_counts[run_id] = len(json.loads(rows[0][0]))
        return self._class_counts[run_id]

    # ----- export -------------------------------------------------------------------------
    def export(self, run_id: str, path: str | Path, fmt: Literal["jsonl", "parquet"]) -> int:
        """Write one row/object per prediction (``run_id`` + every Prediction field)."""
        if self.get_run(run_id) is None:
            raise KeyError(f"no run {run_id!r} in {self.path}")
        preds = self.predictions(run_id)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "jsonl":
            _write_jsonl(out, run_id, preds)
        elif fmt == "parquet":
            _write_parquet(out, run_id, preds)
        else:
            raise ValueError(f"export format must be 'jsonl' or 'parquet', not {fmt!r}")
        return len(preds)


def _writable(path: Path) -> bool:
    """SQLite writes the file and creates -wal/-shm beside it, so both must be writable."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def _is_full_disk(path: Path, code: int) -> bool:
    """SQLITE_FULL, or an I/O error (growing -shm or -wal failed) on a filesystem with almost
    no space left: SQLite reports ENOSPC on its memory-mapped -shm file as IOERR_SHMSIZE."""
    if code & 0xFF == SQLITE_FULL:
        return True
    if code & 0xFF != SQLITE_IOERR:
        return False
    try:
        return shutil.disk_usage(path.parent).free < LOW_DISK_BYTES
    except OSError:
        return False


def _store_error(path: Path, error: sqlite3.DatabaseError) -> StoreError:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None and _is_full_disk(path, code):
        return StoreError(
            f"{path}: disk full ({error}); committed predictions are kept, free some space and "
            "re-run to resume",
            disk_full=True,
        )
    if code is not None and code & 0xFF == SQLITE_READONLY:
        return StoreError(f"{path}: the store is read-only here ({error}); use another --store")
    return StoreError(f"{path}: {error}")


def _check_index(value: Any, n_classes: int, example_id: str, name: str) -> int:
    try:
        index = operator.index(value)
    except TypeError:
        raise ValueError(f"prediction {example_id!r}: {name}={value!r} is not an integer") from None
    if not 0 <= index < n_classes:
        raise ValueError(
            f"prediction {example_id!r}: {name}={index} is outside the run's {n_classes} classes"
        )
    return index


def _prediction_row(p: Prediction, n_classes: int) -> tuple[Any, ...]:
    """Validate one Prediction against the run's class count and turn it into column values."""
    eid = str(p.example_id)
    label = _check_index(p.label, n_classes, eid, "label")
    pred = None if p.pred is None else _check_index(p.pred, n_classes, eid, "pred")
    scores_json = None
    if p.scores is not None:
        scores = [None if s is None else float(s) for s in p.scores]
        if len(scores) != n_classes:
            raise ValueError(
                f"prediction {eid!r}: scores has {len(scores)} entries, the run has "
                f"{n_classes} classes"
            )
        scores_json = _dumps(scores)
    choices_json = None
    if p.choices is not None:
        choices_json = _dumps([_check_index(c, n_classes, eid, "choices") for c in p.choices])
    hit = None if p.hit is None else int(bool(p.hit))
    seconds = float(p.seconds) if p.seconds is not None else None
    error = None if p.error is None else str(p.error)
    text = None if p.text is None else str(p.text)
    extra = _dumps(p.extra or {})
    if p.outcome not in OUTCOMES:
        raise ValueError(f"prediction {eid!r}: outcome {p.outcome!r} is not one of {OUTCOMES}")
    if p.flag is not None and p.flag not in ANSWER_FLAGS:
        raise ValueError(f"prediction {eid!r}: flag {p.flag!r} is not one of {ANSWER_FLAGS}")
    return (eid, label, int(bool(p.ok)), error, text, scores_json, choices_json, pred, hit,
            seconds, extra, p.outcome, p.flag)  # fmt: skip


def _row_prediction(r: tuple[Any, ...]) -> Prediction:
    return Prediction(
        example_id=r[0],
        label=r[1],
        ok=bool(r[2]),
        error=r[3],
        text=r[4],
        scores=_loads(r[5]),
        choices=_loads(r[6]),
        pred=r[7],
        hit=None if r[8] is None else bool(r[8]),
        seconds=math.nan if r[9] is None else r[9],
        extra=_loads(r[10]),
        outcome=r[11],
        flag=r[12],
    )


def _export_dict(run_id: str, p: Prediction) -> dict[str, Any]:
    return {"run_id": run_id, **asdict(p)}


def _write_jsonl(out: Path, run_id: str, preds: list[Prediction]) -> None:
    with out.open("w", encoding="utf-8") as f:
        for p in preds:
            f.write(_dumps(_export_dict(run_id, p)) + "\n")


def _write_parquet(out: Path, run_id: str, preds: list[Prediction]) -> None:
    """Columns typed for analysis: scores list<double> (null = not scored, NaN kept as NaN),
    choices list<int64>, extra as JSON text (free-form)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    string, int64, float64, boolean = pa.string(), pa.int64(), pa.float64(), pa.bool_()
    schema = pa.schema(
        [("run_id", string), ("example_id", string), ("label", int64), ("ok", boolean),
         ("error", string), ("text", string), ("scores", pa.list_(float64)),
         ("choices", pa.list_(int64)), ("pred", int64), ("hit", boolean), ("seconds", float64),
         ("extra", string), ("outcome", string), ("flag", string)]
    )  # fmt: skip
    rows = [_export_dict(run_id, p) | {"extra": _dumps(p.extra)} for p in preds]
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, out)
