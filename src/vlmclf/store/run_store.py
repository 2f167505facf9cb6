"""The run store: one SQLite file holding runs and their predictions.

Why SQLite: a run over 50k images takes hours and may be killed at any moment (OOM killer, a
preempted job, Ctrl-C). The store is in WAL mode and every batch of predictions is one
transaction, so a SIGKILL loses at most the batch in flight and never corrupts what was
committed; a resumed run asks ``done_ids`` and skips those examples. Readers (reports, a second
terminal) can read while a writer runs.

Large runs (schema 4): per-class ``scores`` and the likelihood method's per-token log-probs
(``extra["token_logprobs"]``, ``extra["image_free"]``) are packed binary arrays aligned with the
run's class list (``store_rows``, ``store_arrays``), ~21 KB for a 1,000-class likelihood row
instead of ~120-220 KB of JSON; the image-free prior, the same for every image, is stored once.
Runs are read a chunk at a time (``prediction_chunks``) or as numpy columns (``column_chunks``,
``columns``), so nothing needs one Python object per row for a whole run.

Floats round-trip exactly: REAL columns hold IEEE doubles, packed arrays are float32 only where
every value is exactly a float32 (else float64), and JSON holds ``repr`` of Python floats. JSON
cannot hold NaN or infinities, so wherever this module writes JSON (``scores_json`` of rows
before schema 4, ``extra_json``, ``meta_json`` and the exported ``extra`` text) a non-finite
float is written as the object ``{"$float": "nan"}`` / ``{"$float": "inf"}`` /
``{"$float": "-inf"}`` and read back as the float; ``None`` stays ``null`` (for scores: "not
scored"). A NaN ``seconds`` is stored by SQLite as NULL and read back as NaN. The export's own
float columns (``scores``, ``seconds``) write a non-finite float as null, in JSONL and Parquet
alike (see ``store.export``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from vlmclf.records import Prediction, PredictionColumns
from vlmclf.store.export import EXPORT_CHUNK_ROWS, RunNames, write_jsonl, write_parquet
from vlmclf.store.json_safe import dumps as _dumps
from vlmclf.store.json_safe import from_json_safe, to_json_safe
from vlmclf.store.json_safe import loads as _loads
from vlmclf.store.leases import SCHEMA_V5, Lease, Owner, RunBusyError
from vlmclf.store.rows import (
    OUTCOME_BEFORE_V3,
    PRED_COLUMNS,
    PRED_COLUMNS_WITHOUT_ARRAYS,
    RowDecoder,
    RowEncoder,
    column_select,
    columns_for,
)

__all__ = ["RunStore", "StoreError", "StoreMissingError", "from_json_safe", "to_json_safe"]

SCHEMA_VERSION = 5
CHUNK_ROWS = 1024
"""Rows per chunk when a run is read in chunks: a few MB of scores at 1,000 classes."""
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

# Packed arrays (``store_rows``, ``store_arrays``): new rows keep scores and per-token log-probs
# as binary, and shared arrays (log-prob layouts, the image-free prior) once in ``arrays``. Rows
# written before stay JSON and are read as they are: no rewrite of a large store on open.
_SCHEMA_V4 = """
ALTER TABLE predictions ADD COLUMN scores_none BLOB;
ALTER TABLE predictions ADD COLUMN logprobs_layout TEXT;
ALTER TABLE predictions ADD COLUMN image_free_layout TEXT;
ALTER TABLE predictions ADD COLUMN image_free TEXT;
ALTER TABLE predictions ADD COLUMN scores_packed BLOB;
ALTER TABLE predictions ADD COLUMN logprobs BLOB;
CREATE TABLE arrays (array_id TEXT PRIMARY KEY, data BLOB NOT NULL);
"""

# Migrations from version v to v+1, applied in order when an older store is opened.
# Leases (schema 5, ``vlmclf.store.leases``): who computes a running run, and its heartbeat.
_MIGRATIONS: dict[int, str] = {
    0: _SCHEMA_V1, 1: _SCHEMA_V2, 2: _SCHEMA_V3, 3: _SCHEMA_V4, 4: SCHEMA_V5
}  # fmt: skip
_PRED_COLUMNS = PRED_COLUMNS
# A stored answer is final; a transient failure is replaced by whatever the retry gives, and a
# data failure by an answer (``--retry-failed``).
_REPLACE_FAILURE = ", ".join(
    f"{c.strip()} = excluded.{c.strip()}" for c in _PRED_COLUMNS.split(",")[1:]
)


SQLITE_FULL = 13
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_CANTOPEN = 14
LOW_DISK_BYTES = 1 << 20
_TABLES_BY_VERSION = {
    1: ("runs", "predictions"),
    2: ("runs", "predictions", "analyses"),
    3: ("runs", "predictions", "analyses"),
    4: ("runs", "predictions", "analyses", "arrays"),
    5: ("runs", "predictions", "analyses", "arrays", "leases"),
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
    """What the run id hashes (see ``vlmclf.run.identity``); None for a run stored before
    schema 3."""
    lease: Lease | None = None
    """Who computes the run now (a ``running`` run with a live lease), else None."""

    @property
    def threads(self) -> int | None:
        """torch's CPU thread count in the run's latest session, from the environment the
        runner records (None for a run stored before thread counts were recorded)."""
        environment = self.meta.get("environment_last") or self.meta.get("environment") or {}
        count = environment.get("torch_threads")
        return None if count is None else int(count)


@dataclass(frozen=True)
class AnalysisRecord:
    """One stored analysis (probe, sweep, frequency, finetune, wikiqa, rematch)."""

    analysis_id: str
    kind: str
    spec: dict[str, Any]
    result: dict[str, Any]
    created_at: str


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
        self._class_lists: dict[str, list[str]] = {}
        self.owner = Owner.this_process()
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
        except sqlite3.OperationalError as e:
            conn.close()
            if getattr(e, "sqlite_errorcode", 0) & 0xFF != SQLITE_CANTOPEN:
                raise  # busy, locked, ...: never fall back to reading without locks
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:  # immutable=1 would not see its rows
                raise StoreError(
                    f"{self.path}: the store's folder is read-only and {wal.name} holds rows not "
                    "yet in the main file; copy both files to a writable folder to read them"
                ) from e
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
        _check_version_number(self.path, version, n_tables)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: store schema version {version} is newer than this vlmclf "
                f"understands ({SCHEMA_VERSION}); upgrade vlmclf"
            )
        self.schema_version = version  # what the file holds; read-only stores keep theirs
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
        self.schema_version = SCHEMA_VERSION
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
        self.owner.closed()

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
        ``identity`` is what the id hashes, kept so that `results` can show it. Takes the run's
        lease for this store object (``RunBusyError`` if another live process holds it); renew
        it with ``renew_lease`` while computing."""
        try:
            if not isinstance(json.loads(spec_json), dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise ValueError(f"run {run_id}: spec_json is not a JSON object: {e}") from e
        names = [str(n) for n in class_names]
        now = _now()
        identity_json = None if identity is None else _dumps(identity)
        with self._transaction() as conn:
            if self.schema_version >= 5:
                self._take_lease(conn, run_id)
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
        self._class_lists[run_id] = names

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
            if not self._still_ours(conn, run_id):
                return  # another live process took the run over: its status is its own
            merged = {**_loads(row[0]), **(meta or {})}
            conn.execute(
                "UPDATE runs SET status = ?, elapsed_s = elapsed_s + ?, meta_json = ?,"
                " updated_at = ? WHERE run_id = ?",
                (status, float(elapsed_s), _dumps(merged), _now(), run_id),
            )

    # ----- leases (vlmclf.store.leases) ---------------------------------------------------
    def _take_lease(self, conn: sqlite3.Connection, run_id: str) -> None:
        """Within a write transaction: the run's lease for this store object, unless another
        live process holds it. A lease of this very process (another store object, a run that
        raised) is taken over: the lock is between processes."""
        held = self._lease_row(conn, run_id)
        status = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        running = status is not None and status[0] == "running"
        if running and held is not None and held.alive() and not held.held_by_this_process():
            raise RunBusyError(self.path, held)
        now = time.time()
        conn.execute(
            "INSERT OR REPLACE INTO leases (run_id, pid, host, token, started_at, heartbeat_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, self.owner.pid, self.owner.host, self.owner.token, now, now),
        )

    def _still_ours(self, conn: sqlite3.Connection, run_id: str) -> bool:
        """Within a write transaction: False when another live process holds the run's lease
        (it took the run over; this one must not write its status). The row is left: a lease
        counts only while the run is ``running``."""
        if self.schema_version < 5:
            return True
        held = self._lease_row(conn, run_id)
        return held is None or held.token == self.owner.token or not held.alive()

    def _lease_row(self, conn: sqlite3.Connection, run_id: str) -> Lease | None:
        row = conn.execute(
            "SELECT run_id, pid, host, token, started_at, heartbeat_at FROM leases"
            " WHERE run_id = ?", (run_id,)
        ).fetchone()  # fmt: skip
        return None if row is None else Lease(*row)

    def renew_lease(self, run_id: str) -> bool:
        """Write this store's heartbeat on the run; False once another process holds it."""
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE leases SET heartbeat_at = ? WHERE run_id = ? AND token = ?",
                (time.time(), run_id, self.owner.token),
            )
            return cur.rowcount == 1

    def lease(self, run_id: str) -> Lease | None:
        """The run's lease row, alive or not (None: nobody took it, or a store before v5)."""
        if self.schema_version < 5:
            return None
        with self._lock, self._guard():
            return self._lease_row(self._conn, run_id)

    def get_run(self, run_id: str) -> RunRecord | None:
        records = self._run_records("WHERE r.run_id = ?", (run_id,))
        return records[0] if records else None

    def list_runs(self) -> list[RunRecord]:
        """All runs, oldest first."""
        return self._run_records("", ())

    def _run_records(self, where: str, params: tuple[Any, ...]) -> list[RunRecord]:
        v3 = self.schema_version >= 3
        transient = (
            "(SELECT count(*) FROM predictions p WHERE p.run_id = r.run_id"
            "  AND p.outcome = 'transient_failure')" if v3 else "0"
        )  # fmt: skip
        v5 = self.schema_version >= 5
        lease = ("l.run_id, l.pid, l.host, l.token, l.started_at, l.heartbeat_at" if v5
                 else "NULL, NULL, NULL, NULL, NULL, NULL")  # fmt: skip
        rows = self._query(
            "SELECT r.run_id, r.spec_json, r.class_names_json, r.status, r.n_total,"
            " (SELECT count(*) FROM predictions p WHERE p.run_id = r.run_id),"
            " (SELECT count(*) FROM predictions p WHERE p.run_id = r.run_id AND p.ok = 0),"
            " r.created_at, r.updated_at, r.elapsed_s, r.meta_json,"
            f" {transient}, {'r.identity_json' if v3 else 'NULL'}, {lease}"
            f" FROM runs r {'LEFT JOIN leases l ON l.run_id = r.run_id' if v5 else ''}"
            f" {where} ORDER BY r.created_at, r.run_id",
            params,
        )
        # Columns are in RunRecord's field order; spec and class names are parsed.
        now = time.time()
        records = []
        for r in rows:
            held = None if r[13] is None else Lease(*r[13:19])
            status, elapsed = _shown_status(r[3], r[11], r[9], held, v5, now)
            records.append(RunRecord(r[0], json.loads(r[1]), r[1], json.loads(r[2]), status,
                                     *r[4:9], elapsed, _loads(r[10]), r[11], _loads(r[12]),
                                     held if status == "running" else None))  # fmt: skip
        return records

    def delete_run(self, run_id: str) -> None:
        """Remove the run and all its predictions (a no-op for an unknown run)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM predictions WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            if self.schema_version >= 5:
                conn.execute("DELETE FROM leases WHERE run_id = ?", (run_id,))
            if self.schema_version >= 4:  # arrays no row refers to any more
                conn.execute(
                    "DELETE FROM arrays WHERE array_id NOT IN (SELECT logprobs_layout FROM"
                    " predictions WHERE logprobs_layout IS NOT NULL UNION SELECT"
                    " image_free_layout FROM predictions WHERE image_free_layout IS NOT NULL"
                    " UNION SELECT image_free FROM predictions WHERE image_free IS NOT NULL)"
                )
        self._class_lists.pop(run_id, None)

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
        outcome = "outcome" if self.schema_version >= 3 else OUTCOME_BEFORE_V3
        rows = self._query(
            f"SELECT example_id FROM predictions WHERE run_id = ? AND {outcome} IN {final}",
            (run_id,),
        )
        return {r[0] for r in rows}

    def add_predictions(self, run_id: str, preds: Iterable[Prediction]) -> int:
        """Store a batch in one transaction. A stored answer is kept (the new record ignored);
        a stored transient failure is replaced by the new record, a data failure only by an
        answer; a replaced row keeps its place in the order.

        Returns the number of rows inserted or replaced. ``seq`` numbers rows in arrival order.
        """
        encoder = RowEncoder(self._class_names(run_id))
        rows = [encoder.row(p) for p in preds]
        inserted = 0
        with self._transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO arrays (array_id, data) VALUES (?, ?)",
                list(encoder.arrays.items()),
            )
            seq = conn.execute(
                "SELECT coalesce(max(seq), -1) + 1 FROM predictions WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
            for row in rows:
                cur = conn.execute(
                    f"INSERT INTO predictions (run_id, seq, {_PRED_COLUMNS})"
                    f" VALUES (?, ?, {', '.join('?' * len(row))})"
                    f" ON CONFLICT (run_id, example_id) DO UPDATE SET {_REPLACE_FAILURE}"
                    " WHERE predictions.outcome = 'transient_failure' OR (excluded.outcome ="
                    " 'answer' AND predictions.outcome != 'answer')",
                    (run_id, seq + inserted, *row),
                )
                inserted += cur.rowcount
        return inserted

    def predictions(self, run_id: str) -> list[Prediction]:
        """The run's predictions in arrival order, as one list: for small runs and tests; a
        large run is read with :meth:`prediction_chunks` or :meth:`column_chunks`."""
        return [p for chunk in self.prediction_chunks(run_id) for p in chunk]

    def prediction_chunks(
        self,
        run_id: str,
        example_ids: set[str] | None = None,
        chunk_rows: int = CHUNK_ROWS,
        *,
        arrays: bool = True,
    ) -> Iterator[list[Prediction]]:
        """The run's predictions in arrival order, ``chunk_rows`` at a time (only those in
        ``example_ids`` when given), so memory holds one chunk of Prediction objects.
        ``arrays=False`` leaves the packed ``extra["token_logprobs"]`` / ``["image_free"]``
        unread (for readers of texts and labels)."""
        decoder = RowDecoder(self._class_names(run_id, missing_ok=True), self._fetch_arrays)
        select = columns_for(
            self.schema_version, PRED_COLUMNS if arrays else PRED_COLUMNS_WITHOUT_ARRAYS
        )
        for rows in self._row_pages(run_id, select, chunk_rows):
            if example_ids is not None:
                rows = [r for r in rows if r[0] in example_ids]
            decoder.prefetch(rows, (14, 15, 16))
            yield [decoder.prediction(r) for r in rows]

    def iter_predictions(
        self, run_id: str, example_ids: set[str] | None = None, *, arrays: bool = True
    ) -> Iterator[Prediction]:
        """One Prediction at a time, read a chunk at a time."""
        for chunk in self.prediction_chunks(run_id, example_ids, arrays=arrays):
            yield from chunk

    def column_chunks(
        self,
        run_id: str,
        *,
        scores: bool = True,
        example_ids: set[str] | None = None,
        chunk_rows: int = CHUNK_ROWS,
    ) -> Iterator[PredictionColumns]:
        """The run's predictions as numpy columns, ``chunk_rows`` rows at a time, in arrival
        order; ``scores`` adds the (rows x classes) float64 matrix. Texts, choices and
        ``extra`` are not read at all."""
        decoder = RowDecoder(self._class_names(run_id, missing_ok=True), self._fetch_arrays)
        select = column_select(self.schema_version, scores)
        for rows in self._row_pages(run_id, select, chunk_rows):
            if example_ids is not None:
                rows = [r for r in rows if r[0] in example_ids]
            yield decoder.columns(rows, scores)

    def columns(self, run_id: str, *, example_ids: set[str] | None = None) -> PredictionColumns:
        """The whole run's columns without scores: a few bytes per row."""
        parts = self.column_chunks(run_id, scores=False, example_ids=example_ids,
                                   chunk_rows=16 * CHUNK_ROWS)  # fmt: skip
        return PredictionColumns.concat(list(parts))

    def _row_pages(
        self, run_id: str, select: str, chunk_rows: int
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Pages of rows by ``seq`` (keyset paging: each page is one short query, so no read
        transaction stays open between pages while a writer runs)."""
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, not {chunk_rows}")
        after = -1
        while True:
            rows = self._query(
                f"SELECT seq, {select} FROM predictions WHERE run_id = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (run_id, after, chunk_rows),
            )
            if not rows:
                return
            after = rows[-1][0]
            yield [r[1:] for r in rows]
            if len(rows) < chunk_rows:
                return

    def _fetch_arrays(self, ids: list[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ", ".join("?" * len(part))
            rows = self._query(f"SELECT array_id, data FROM arrays WHERE array_id IN ({marks})",
                               tuple(part))  # fmt: skip
            found.update({r[0]: r[1] for r in rows})
        return found

    def _class_names(self, run_id: str, missing_ok: bool = False) -> list[str]:
        if run_id not in self._class_lists:
            rows = self._query("SELECT class_names_json FROM runs WHERE run_id = ?", (run_id,))
            if not rows and missing_ok:  # reading an unknown run: no rows either
                return []
            if not rows:
                raise KeyError(f"no run {run_id!r} in {self.path}; call start_run first")
            self._class_lists[run_id] = json.loads(rows[0][0])
        return self._class_lists[run_id]

    # ----- export -------------------------------------------------------------------------
    def export(
        self,
        run_id: str,
        path: str | Path | BinaryIO,
        fmt: Literal["jsonl", "parquet"],
        chunks: Iterable[list[Prediction]] | None = None,
        sources: Mapping[str, str] | None = None,
    ) -> int:
        """Write one row/object per prediction (``run_id``, the class names, the image path
        from ``sources`` (example id -> path) where given, and every Prediction field), a chunk
        of rows at a time: memory stays bounded whatever the run's size. Returns the count.
        ``path`` may be an open binary stream (standard output), which is not closed.
        ``chunks`` (default: the stored rows as they are) lets a caller export finalized rows
        (``run.results.export_run``: a calibrated run's calibrated predictions)."""
        if self.get_run(run_id) is None:
            raise KeyError(f"no run {run_id!r} in {self.path}")
        writers = {"jsonl": write_jsonl, "parquet": write_parquet}
        if fmt not in writers:
            raise ValueError(f"export format must be 'jsonl' or 'parquet', not {fmt!r}")
        out = Path(path) if isinstance(path, str | Path) else path
        if isinstance(out, Path):
            out.parent.mkdir(parents=True, exist_ok=True)
        if chunks is None:
            chunks = self.prediction_chunks(run_id, chunk_rows=EXPORT_CHUNK_ROWS)
        names = RunNames(self._class_names(run_id), sources)
        return writers[fmt](out, run_id, chunks, names)


def _shown_status(
    status: str, n_transient: int, elapsed_s: float, held: Lease | None, v5: bool, now: float
) -> tuple[str, float]:
    """(status, elapsed) as `results` shows them: a finished run with transient failures is
    ``incomplete``; a ``running`` run nobody holds alive (killed, or its last status write
    failed) is ``interrupted``. A session not finished counts its time up to its last
    heartbeat. Stores before v5 have no leases: their ``running`` stays as it is."""
    if status == "done" and n_transient:
        return INCOMPLETE, elapsed_s
    if status != "running" or not v5:
        return status, elapsed_s
    if held is None:
        return "interrupted", elapsed_s
    session = max(0.0, min(now, held.heartbeat_at if not held.alive(now) else now)
                  - held.started_at)  # fmt: skip
    return ("running" if held.alive(now) else "interrupted"), elapsed_s + session


def _check_version_number(path: Path, version: int, n_tables: int) -> None:
    """A vlmclf store whose schema version was damaged (negative, or 0 while it has tables):
    migrating it would replay CREATE TABLE over its tables, so say what is wrong instead."""
    if version < 0:
        raise StoreError(f"{path}: damaged vlmclf store, schema version {version} is negative "
                         "(PRAGMA user_version was overwritten); restore it or use another "
                         "--store")  # fmt: skip
    if version == 0 and n_tables:
        raise StoreError(f"{path}: damaged vlmclf store, schema version 0 but it holds "
                         f"{n_tables} table(s) (PRAGMA user_version was overwritten); restore "
                         "it or use another --store")  # fmt: skip


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
