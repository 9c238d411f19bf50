"""Pure shaping of stored numbers for the pages: a job's per-epoch metrics grouped into charts, a
version's metrics picked into table columns, numbers formatted. No database, no torch."""

from __future__ import annotations

import math
from typing import Any

# Chart groups for a job's per-epoch metrics, matched on the metric's name, first match wins.
CURVE_GROUPS: list[tuple[str, str, tuple[str, ...]]] = [
    ("reconstruction", "Reconstruction error", ("reconstruction",)),
    ("rmse", "Validation RMSE", ("rmse",)),
    ("free_energy", "Free-energy gap (held-out − training)", ("free_energy", "gap")),
    ("swap", "Parallel-tempering swap rates", ("swap",)),
    ("other", "Other per-epoch metrics", ("",)),
]
_SKIP = {"epoch", "seconds", "elapsed", "time", "progress"}

# (column header, metric names tried in order) for a version's evaluation.
VERSION_COLUMNS: list[tuple[str, tuple[str, ...]]] = [
    ("RMSE", ("rmse", "valid_rmse", "test_rmse")),
    ("MAE", ("mae", "valid_mae", "test_mae")),
    ("P@10", ("precision_at_10", "precision@10", "precision10")),
    ("R@10", ("recall_at_10", "recall@10", "recall10")),
    ("nDCG@10", ("ndcg_at_10", "ndcg@10", "ndcg10")),
    ("AIS log-lik.", ("ais_log_likelihood", "ais_loglik", "log_likelihood_ais", "ais")),
]


def _numbers(name: str, value: Any) -> list[tuple[str, float | None]]:
    """A metric value as named numbers: a list (e.g. one swap rate per temperature pair) expands."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [(name, float(value) if math.isfinite(value) else None)]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in value):
        return [(f"{name}[{i}]", float(v) if math.isfinite(v) else None) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: list[tuple[str, float | None]] = []
        for key, inner in value.items():
            out.extend(_numbers(f"{name}.{key}", inner))
        return out
    return []


def job_curves(epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"epoch": [...], "groups": [{"key", "title", "series": {name: [values per epoch]}}]}``;
    a metric missing in some epoch is None there."""
    labels: list[Any] = []
    table: dict[str, list[float | None]] = {}
    for index, row in enumerate(epochs):
        labels.append(row.get("epoch", index + 1) if isinstance(row, dict) else index + 1)
        if not isinstance(row, dict):
            continue
        for name, value in row.items():
            if name in _SKIP:
                continue
            for series, number in _numbers(name, value):
                table.setdefault(series, [None] * index)
                table[series].append(number)
        for values in table.values():
            if len(values) < index + 1:
                values.append(None)
    labels = [int(x) if isinstance(x, float) and x.is_integer() else x for x in labels]
    groups: list[dict[str, Any]] = []
    taken: set[str] = set()
    for key, title, needles in CURVE_GROUPS:
        series = {name: values for name, values in table.items()
                  if name not in taken and any(needle in name.lower() for needle in needles)}
        taken.update(series)
        if series:
            groups.append({"key": key, "title": title, "series": series})
    return {"epoch": labels, "groups": groups}


def pick(metrics: dict[str, Any] | None, names: tuple[str, ...]) -> Any:
    for name in names:
        if metrics and name in metrics and metrics[name] is not None:
            return metrics[name]
    return None


def version_row(metrics: dict[str, Any] | None) -> list[Any]:
    return [pick(metrics, names) for _, names in VERSION_COLUMNS]


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        if abs(value) >= 1e4:
            return f"{value:,.1f}"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def flat_metrics(metrics: dict[str, Any] | None, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested metrics as (dotted name, scalar) pairs for a details table; the per-epoch ``history`` is
    drawn as curves instead."""
    out: list[tuple[str, Any]] = []
    for key, value in sorted((metrics or {}).items(), key=lambda kv: (isinstance(kv[1], dict), kv[0])):
        if key == "history" and not prefix:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(flat_metrics(value, name + "."))
        elif isinstance(value, list) and len(value) > 12:
            out.append((name, f"[{len(value)} values]"))
        else:
            out.append((name, value))
    return out
