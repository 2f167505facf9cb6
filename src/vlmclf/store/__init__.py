"""The run store: one SQLite file of runs, predictions, packed arrays and analyses.

``run_store`` is the database (schema, migrations, reads and writes); ``rows`` turns a Prediction
into a table row and back, ``arrays`` packs float arrays, ``json_safe`` keeps floats exact in
JSON, ``export`` writes JSONL and Parquet, ``leases`` says who computes a running run.
Everything here imports only ``vlmclf.records``.
"""

from vlmclf.store.leases import Heartbeat, Lease, LeaseLostError, RunBusyError
from vlmclf.store.run_store import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    AnalysisRecord,
    RunRecord,
    RunStore,
    StoreError,
    StoreMissingError,
)

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "AnalysisRecord",
    "Heartbeat",
    "Lease",
    "LeaseLostError",
    "RunBusyError",
    "RunRecord",
    "RunStore",
    "StoreError",
    "StoreMissingError",
]
