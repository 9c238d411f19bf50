"""What a model version has learned, made visible: for each hidden unit the items that excite it most,
and the distributions of weights and biases. Versions are immutable, so each view is computed once per
version and kept in a small LRU cache per app (``InsideCache``)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.admin import charts, queries
from service.models.models import ModelVersion

MAX_UNITS = 48
TOP_ITEMS = 6
BINS = 40


@dataclass
class Inside:
    units: list[dict[str, Any]] = field(default_factory=list)
    units_explained: str = ""
    histograms: list[dict[str, Any]] = field(default_factory=list)
    filters: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


def _histogram(key: str, title: str, values: torch.Tensor, color: str) -> dict[str, Any]:
    values = values.detach().double().flatten().cpu()
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        return {"key": key, "chart": charts.bar([], [], label=title)}
    low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1e-9
    counts = torch.histc(values, bins=BINS, min=low, max=high)
    width = (high - low) / BINS
    labels = [f"{low + (i + 0.5) * width:.3g}" for i in range(BINS)]
    spec = charts.bar(labels, [int(c) for c in counts], label=title, color=color, y_title="count")
    spec["options"]["plugins"]["title"] = {"display": True, "text": f"{title} ({values.numel():,} values)"}
    return {"key": key, "chart": spec}


def _excitation(model: Any) -> tuple[torch.Tensor, str] | None:
    """(num_items, num_hidden) scores: how strongly each item drives each hidden unit on."""
    net = model.net
    weight = getattr(net, "weight", None)
    if weight is None or weight.dim() != 3:
        return None
    with torch.no_grad():
        if model.config.orientation == "user":
            # Visible units are items: a top rating of item i rather than the lowest one adds this much
            # to hidden unit j's input.
            scores = (weight[:, -1, :] - weight[:, 0, :]).double()
            explained = (f"User-based model: visible units are items. Each hidden unit lists the items whose top "
                         f"rating ({model.num_values}) instead of the lowest (1) raises its input most "
                         f"(W[item, {model.num_values}, h] − W[item, 1, h]).")
        else:
            # Cases are items: p(h_j = 1 | the item's ratings by all training users). The model caches the
            # hidden field of every item case for its own predictions; reuse it.
            scores = torch.sigmoid(model._item_case_fields().double())
            explained = ("Item-based model: each item is a case of the users' ratings. Each hidden unit lists the "
                         "items whose ratings switch it on with the highest probability p(h = 1 | item's ratings).")
    return scores.cpu(), explained


def compute(session: Session, version: ModelVersion) -> Inside:
    from rbm_core.ratings import RatingModel, RatingModelError

    started = time.perf_counter()
    inside = Inside()
    artifact = session.scalar(select(ModelVersion.artifact).where(ModelVersion.id == version.id))
    try:
        model = RatingModel.from_bytes(artifact)
    except RatingModelError as exc:
        inside.error = f"cannot load this version's artifact: {exc}"
        return inside
    net = model.net
    for key, title, color in (("weight", "weights W", charts.PALETTE[0]),
                              ("visible_bias", "visible biases b", charts.PALETTE[1]),
                              ("hidden_bias", "hidden biases c", charts.PALETTE[2]),
                              ("conditional_weight", "conditional weights D", charts.PALETTE[3])):
        tensor = getattr(net, key, None)
        if isinstance(tensor, torch.Tensor):
            inside.histograms.append(_histogram(key, title, tensor, color))

    found = _excitation(model)
    if found is not None:
        scores, inside.units_explained = found
        item_index = session.scalar(select(ModelVersion.item_index).where(ModelVersion.id == version.id)) or []
        k = min(TOP_ITEMS, scores.shape[0])
        top_values, top_rows = scores.topk(k, dim=0)  # (k, H)
        wanted = {int(item_index[r]) for r in top_rows[:, :MAX_UNITS].flatten().tolist() if r < len(item_index)}
        names = queries.items_by_ids(session, sorted(wanted))
        hidden_bias = getattr(net, "hidden_bias", torch.zeros(scores.shape[1])).detach().cpu()
        for j in range(min(MAX_UNITS, scores.shape[1])):
            top = []
            for value, row in zip(top_values[:, j].tolist(), top_rows[:, j].tolist(), strict=True):
                internal = int(item_index[row]) if row < len(item_index) else None
                external, title = names.get(internal, (f"#{row}", None)) if internal is not None else (f"#{row}", None)
                top.append({"item": external, "title": title, "score": value})
            inside.units.append({"index": j, "bias": float(hidden_bias[j]), "top": top})
    else:
        inside.units_explained = f"No per-item view for a {model.config.kind} model yet."
    inside.seconds = time.perf_counter() - started
    return inside


class InsideCache:
    def __init__(self, size: int):
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, Inside] = OrderedDict()

    def get(self, session: Session, version: ModelVersion) -> Inside:
        with self._lock:
            hit = self._entries.get(version.id)
            if hit is not None:
                self._entries.move_to_end(version.id)
                return hit
        inside = compute(session, version)
        with self._lock:
            self._entries[version.id] = inside
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return inside
