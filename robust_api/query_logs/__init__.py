"""The query log: the system of record of every query (SQLite by default; JSONL/Parquet exchange)."""

from .exchange import export_jsonl, export_parquet, import_jsonl, import_parquet, open_log
from .merging import MergeReport, merge_calls, merge_logs
from .records import FORMAT_VERSION, CallHeader, CallLog, QueryRecord
from .store import MemoryQueryLog, QueryLog, SQLiteQueryLog, default_log_path, open_store, resolve_log_path

__all__ = [
    "FORMAT_VERSION",
    "CallHeader",
    "CallLog",
    "QueryRecord",
    "QueryLog",
    "SQLiteQueryLog",
    "MemoryQueryLog",
    "open_log",
    "open_store",
    "resolve_log_path",
    "default_log_path",
    "export_jsonl",
    "import_jsonl",
    "export_parquet",
    "import_parquet",
    "merge_logs",
    "merge_calls",
    "MergeReport",
]
