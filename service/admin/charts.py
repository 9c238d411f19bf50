"""Chart.js configurations built on the server and handed to the page as JSON (``<canvas
data-chart=...>``); admin.js draws them with the vendored Chart.js. Nothing here draws."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

PALETTE = ["#2f5fd0", "#d0642f", "#1a7f37", "#9c3fc4", "#b26b00", "#0f8a8a", "#c9302c", "#5b6478"]


def _clean(values: Sequence[Any]) -> list[Any]:
    # JSON has no NaN/Infinity; Chart.js skips nulls.
    return [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]


def bar(labels: Sequence[Any], values: Sequence[float], *, label: str, color: str = PALETTE[0],
        x_title: str = "", y_title: str = "") -> dict[str, Any]:
    return {
        "type": "bar",
        "data": {"labels": list(labels), "datasets": [{"label": label, "data": _clean(values),
                                                       "backgroundColor": color, "barPercentage": 1.0,
                                                       "categoryPercentage": 0.95}]},
        "options": {"plugins": {"legend": {"display": False}},
                    "scales": {"x": {"title": {"display": bool(x_title), "text": x_title}},
                               "y": {"beginAtZero": True, "title": {"display": bool(y_title), "text": y_title}}}},
    }


def lines(labels: Sequence[Any], series: dict[str, Sequence[float | None]], *, x_title: str = "",
          y_title: str = "", points: bool = True) -> dict[str, Any]:
    return {
        "type": "line",
        "data": {"labels": list(labels), "datasets": [
            {"label": name, "data": _clean(values), "borderColor": PALETTE[i % len(PALETTE)],
             "backgroundColor": PALETTE[i % len(PALETTE)], "pointRadius": 2 if points else 0,
             "borderWidth": 2 if points else 1.5, "spanGaps": True, "tension": 0.1}
            for i, (name, values) in enumerate(series.items())]},
        "options": {"interaction": {"mode": "index", "intersect": False},
                    "scales": {"x": {"title": {"display": bool(x_title), "text": x_title}},
                               "y": {"title": {"display": bool(y_title), "text": y_title}}}},
    }


def to_json(spec: dict[str, Any]) -> str:
    return json.dumps(spec, separators=(",", ":"), allow_nan=False, default=str)
