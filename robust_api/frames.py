"""Results as tables: ``to_pandas`` (a DataFrame with named, typed columns) and
``write_results`` / ``read_results`` (CSV, Parquet, JSON Lines) that round-trip it exactly.

One abstention convention everywhere: ``label`` is null and ``abstained`` is true. Vote counts
are dicts in the DataFrame and JSON text in CSV and Parquet files (decoded on reading).
pandas is needed here only (the ``[pandas]`` extra); Parquet needs pyarrow (``[parquet]``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from typing import Any, Union

from .errors import InvalidInputError, InvalidParameterError, MissingDependencyError

__all__ = ["COLUMNS", "to_pandas", "write_results", "read_results"]

_TEXT = "text"
_FLOAT = "float"
_INT = "int"
_BOOL = "bool"
_COUNTS = "counts"

#: The columns of :func:`to_pandas`, in order, with their kind: text (object, None when
#: missing), float (float64, NaN when missing), int (nullable Int64), bool, counts (dict).
#: The first ones are what most analyses need; see ``Certificate.to_dict`` for each meaning.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("image", _TEXT), ("label", _TEXT), ("abstained", _BOOL), ("radius", _FLOAT), ("p_lower", _FLOAT),
    ("counts", _COUNTS), ("queries", _INT), ("cost_usd", _FLOAT), ("method", _TEXT), ("noise_sd", _FLOAT),
    ("alpha", _FLOAT), ("seed", _INT), ("denoiser", _TEXT), ("provider", _TEXT), ("model_version", _TEXT),
    ("kind", _TEXT), ("tag", _TEXT), ("image_digest", _TEXT), ("run_id", _TEXT), ("N0", _INT), ("N", _INT),
    ("samples", _INT), ("errors", _INT), ("selection", _TEXT), ("guess", _TEXT),
    ("selection_counts", _COUNTS), ("stop_reason", _TEXT), ("target_radius", _FLOAT), ("budget", _INT),
    ("ceiling", _FLOAT), ("p_upper", _FLOAT), ("p_value", _FLOAT), ("offline", _BOOL),
)
_KINDS = dict(COLUMNS)
_FORMATS = (".csv", ".parquet", ".jsonl")


def _pandas():
    try:
        import pandas
    except ImportError:
        raise MissingDependencyError("tables of results need pandas: pip install 'robust-api[pandas]'") from None
    return pandas


def _rows(results: Any) -> list[dict]:
    if hasattr(results, "to_dict") and hasattr(results, "logs"):
        results = [results]  # one result
    if isinstance(results, (str, bytes, dict)) or not isinstance(results, Iterable):
        raise InvalidInputError(
            f"to_pandas takes Certificates or Predictions (one, or an iterable of them), got {type(results).__name__}"
        )
    rows = []
    for position, result in enumerate(results):
        to_dict = getattr(result, "to_dict", None)
        if to_dict is None or not hasattr(result, "logs"):
            raise InvalidInputError(
                f"item {position} is a {type(result).__name__}, not a Certificate or Prediction "
                "(the results of RobustAPI.certify / predict)"
            )
        rows.append(to_dict())
    return rows


def _is_missing(value: Any) -> bool:
    """None, NaN or pandas' NA (what a missing value reads back as from each file format)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ == "NAType"


def _typed(frame):
    """``frame`` with the dtypes of :data:`COLUMNS` (missing columns added), in that order."""
    pd = _pandas()
    out = pd.DataFrame(index=frame.index)
    for name, kind in COLUMNS:
        column = frame[name] if name in frame.columns else pd.Series([None] * len(frame), index=frame.index,
                                                                        dtype=object)
        if kind == _FLOAT:
            out[name] = pd.Series([math.nan if _is_missing(v) else float(v) for v in column], index=frame.index,
                                  dtype="float64")
        elif kind == _INT:
            out[name] = pd.array([None if _is_missing(v) else int(v) for v in column], dtype="Int64")
        elif kind == _BOOL:
            out[name] = pd.Series([_as_bool(v) for v in column], index=frame.index, dtype=bool)
        elif kind == _COUNTS:
            out[name] = pd.Series([_as_counts(v) for v in column], index=frame.index, dtype=object)
        else:
            out[name] = pd.Series([None if _is_missing(v) else str(v) for v in column], index=frame.index,
                                  dtype=object)
    return out


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise InvalidInputError(f"expected true or false, got {value!r}")
        return value.lower() == "true"
    return bool(value) if not _is_missing(value) else False


def _as_counts(value: Any) -> dict:
    if _is_missing(value):
        return {}
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise InvalidInputError(f"vote counts must be a JSON object of label -> votes, got {type(value).__name__}")
    return {str(label): int(votes) for label, votes in value.items()}


def to_pandas(results: Any):
    """The results of ``certify``/``predict`` as a ``pandas.DataFrame``, one row per result.

    Args:
        results: a Certificate or Prediction, or an iterable of them (mixed is fine: a
            prediction's certificate columns are missing values).

    Returns:
        A DataFrame with the columns of :data:`COLUMNS` in that order: image (the image's
        name), label (None when abstained), abstained, radius, p_lower, counts (dict),
        queries, cost_usd, method, noise_sd, alpha, seed, denoiser, provider, model_version,
        then the rest. Nothing of the logs is copied.

    Raises:
        MissingDependencyError: pandas is not installed.
        InvalidInputError: something other than results.
    """
    pd = _pandas()
    rows = _rows(results)
    return _typed(pd.DataFrame.from_records(rows) if rows else pd.DataFrame())


def _frame_of(results: Any):
    pd = _pandas()
    return _typed(results) if isinstance(results, pd.DataFrame) else to_pandas(results)


def _format_of(path: Union[str, "os.PathLike[str]"]) -> str:
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in _FORMATS:
        raise InvalidParameterError(f"results are written as {', '.join(_FORMATS)}; got {os.fspath(path)!r}")
    return suffix


def write_results(results: Any, path: Union[str, "os.PathLike[str]"]) -> int:
    """Write results (or a DataFrame from :func:`to_pandas`) to ``path``: .csv, .parquet (needs
    pyarrow) or .jsonl. Counts are JSON text in CSV/Parquet. Returns the number of rows.

    :func:`read_results` gives back exactly the DataFrame :func:`to_pandas` gives.
    """
    suffix = _format_of(path)
    frame = _frame_of(results)
    if suffix == ".jsonl":
        with open(path, "w", encoding="utf-8") as handle:
            for row in frame.to_dict(orient="records"):
                handle.write(json.dumps({k: _plain(v) for k, v in row.items()}, allow_nan=False) + "\n")
        return len(frame)
    flat = frame.copy()
    for name, kind in COLUMNS:
        if kind == _COUNTS:
            flat[name] = [json.dumps(value, sort_keys=False) for value in frame[name]]
    if suffix == ".csv":
        flat.to_csv(path, index=False)
    else:
        try:
            flat.to_parquet(path, index=False)
        except ImportError:
            raise MissingDependencyError("Parquet needs pyarrow: pip install 'robust-api[parquet]'") from None
    return len(frame)


def _plain(value: Any) -> Any:
    if _is_missing(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def read_results(path: Union[str, "os.PathLike[str]"]):
    """Read a file :func:`write_results` wrote (.csv, .parquet, .jsonl) into the DataFrame
    :func:`to_pandas` gave: same columns, dtypes and values (label None when abstained).

    Raises:
        InvalidParameterError: another file extension.
        InvalidInputError: a value of the wrong kind (e.g. counts that are not a JSON object).
    """
    pd = _pandas()
    suffix = _format_of(path)
    if suffix == ".csv":
        frame = pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[""])
    elif suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except ImportError:
            raise MissingDependencyError("Parquet needs pyarrow: pip install 'robust-api[parquet]'") from None
    else:
        with open(path, encoding="utf-8") as handle:
            frame = pd.DataFrame.from_records([json.loads(line) for line in handle if line.strip()])
    try:
        return _typed(frame)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"{os.fspath(path)}: not a results table written by write_results ({exc})") from None
