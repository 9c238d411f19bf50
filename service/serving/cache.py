"""Per-process cache of the active model versions. Which version is active is re-read from the database at
most every ``model_refresh_seconds`` (one small query); a version is loaded from its artifact on first use
and replaced when another version becomes active, so activation (or rollback) in any process reaches every
process without a restart. Processes share nothing but the database."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import undefer

from service.catalog.models import Item
from service.catalog.repository import external_ids_for
from service.errors import ApiError
from service.models.models import ModelDefinition, ModelVersion

log = logging.getLogger(__name__)

NAMES_MAX_AGE = 30.0  # seconds an item's external id and title are reused by recommendations


@dataclass
class ActiveEntry:
    definition_id: int
    name: str
    version_id: int
    version: int
    activated_at: datetime | None


@dataclass
class LoadedModel:
    name: str
    version: int
    version_id: int
    model: Any  # rbm_core.ratings.RatingModel
    user_ids: np.ndarray  # dense index -> users.id
    item_ids: np.ndarray  # dense index -> items.id
    user_position: dict[int, int] = field(repr=False)
    item_position: dict[int, int] = field(repr=False)
    orientation: str = "user"
    # Item id -> (external id, title, fetched at), filled for every item of the version at load time:
    # recommendations name their items without a query while an entry is younger than ``names_max_age``
    # (NAMES_MAX_AGE, or the model refresh interval if longer), so a renamed or deleted item shows the change
    # within that time.
    names: dict[int, tuple[str, str | None, float]] = field(default_factory=dict, repr=False)
    names_max_age: float = 2.0
    # items.id -> dense index, -1 where the version lacks the item (None: ids too sparse for an array; the dict)
    item_lookup: np.ndarray | None = field(default=None, repr=False)
    # Shared by all models of the process: how many scoring passes may run at once (see ModelCache).
    slot: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(1), repr=False)


class ModelCache:
    def __init__(self, session_factory, *, refresh_seconds: float, device: str | None, metrics=None,
                 scoring_concurrency: int = 1):
        self.session_factory = session_factory
        # A scoring pass is CPU-bound (or one GPU stream): running several at once in one process only makes
        # them contend for the cores and the GIL, so requests queue for a slot and their database work overlaps.
        self.scoring_slot = threading.Semaphore(scoring_concurrency)
        self.refresh_seconds = refresh_seconds
        self.device = device
        self.metrics = metrics
        self._active: dict[str, ActiveEntry] = {}
        self._checked_at = -float("inf")
        self._loaded: dict[int, LoadedModel] = {}  # version id -> model
        self._lock = threading.Lock()
        self._load_locks: dict[int, threading.Lock] = {}

    def invalidate(self) -> None:
        self._checked_at = -float("inf")

    def _refresh(self) -> None:
        if time.monotonic() - self._checked_at < self.refresh_seconds:
            return
        with self.session_factory() as session:
            rows = session.execute(
                select(ModelDefinition.id, ModelDefinition.name, ModelVersion.id, ModelVersion.version,
                       ModelVersion.activated_at)
                .join(ModelVersion, ModelVersion.model_definition_id == ModelDefinition.id)
                .where(ModelVersion.is_active)).all()
        active = {r[1]: ActiveEntry(r[0], r[1], r[2], r[3], r[4]) for r in rows}
        with self._lock:
            self._active = active
            self._checked_at = time.monotonic()
            live = {e.version_id for e in active.values()}
            for version_id in [v for v in self._loaded if v not in live]:
                del self._loaded[version_id]  # a deactivated version leaves memory

    def resolve(self, name: str | None) -> ActiveEntry:
        """The active version of model ``name``, or, with no name, of the most recently activated model."""
        self._refresh()
        active = self._active
        if name is not None:
            entry = active.get(name)
            if entry is None:
                with self.session_factory() as session:
                    exists = session.scalar(select(ModelDefinition.id).where(ModelDefinition.name == name))
                if exists is None:
                    raise ApiError(404, f"model {name!r} not found")
                raise ApiError(404, f"model {name!r} has no active version yet", code="no_active_model")
            return entry
        if not active:
            raise ApiError(404, "no model has an active version yet (train one: rbmrec train, or POST /v1/models/{name}/jobs)",
                           code="no_active_model")
        return max(active.values(), key=lambda e: (e.activated_at.timestamp() if e.activated_at else 0.0, e.version_id))

    def get(self, name: str | None = None) -> LoadedModel:
        entry = self.resolve(name)
        loaded = self._loaded.get(entry.version_id)
        if loaded is not None:
            return loaded
        with self._lock:
            load_lock = self._load_locks.setdefault(entry.version_id, threading.Lock())
        with load_lock:  # one load per version even when many requests arrive at once
            loaded = self._loaded.get(entry.version_id)
            if loaded is None:
                loaded = self._load(entry)
                with self._lock:
                    self._loaded[entry.version_id] = loaded
        return loaded

    def _load(self, entry: ActiveEntry) -> LoadedModel:
        from rbm_core.ratings import RatingModel

        started = time.perf_counter()
        with self.session_factory() as session:
            row = session.scalar(select(ModelVersion).where(ModelVersion.id == entry.version_id)
                                 .options(undefer(ModelVersion.artifact), undefer(ModelVersion.user_index),
                                          undefer(ModelVersion.item_index)))
        if row is None:
            self.invalidate()
            raise ApiError(404, f"model {entry.name!r} version {entry.version} disappeared; retry")
        try:
            model = RatingModel.from_bytes(row.artifact, device=self.device or None)
        except ValueError as exc:  # RatingModelError: bytes this build cannot read (corrupt, or another format)
            log.error("model %s version %d cannot be loaded: %s", entry.name, entry.version, exc)
            raise ApiError(503, f"model {entry.name!r} version {entry.version} cannot be loaded by this build: {exc}",
                           code="model_unavailable") from None
        user_ids = np.asarray(row.user_index, dtype=np.int64)
        item_ids = np.asarray(row.item_index, dtype=np.int64)
        loaded = LoadedModel(
            name=entry.name, version=entry.version, version_id=entry.version_id, model=model, user_ids=user_ids,
            item_ids=item_ids, user_position={int(u): i for i, u in enumerate(user_ids)},
            item_position={int(t): i for i, t in enumerate(item_ids)}, orientation=model.config.orientation,
            names_max_age=max(self.refresh_seconds, NAMES_MAX_AGE) if self.refresh_seconds > 0 else 0.0,
            slot=self.scoring_slot)
        if len(item_ids) and 0 <= int(item_ids.min()) and int(item_ids.max()) < 4 * len(item_ids) + 1_000_000:
            loaded.item_lookup = np.full(int(item_ids.max()) + 1, -1, dtype=np.int64)
            loaded.item_lookup[item_ids] = np.arange(len(item_ids))
        fetched_at = time.monotonic()
        with self.session_factory() as session:
            names = external_ids_for(session, Item, [int(i) for i in item_ids])
        loaded.names.update({iid: (*name, fetched_at) for iid, name in names.items()})
        if self.metrics is not None:
            self.metrics.model_version.labels(entry.name).set(entry.version)
            self.metrics.model_loads.labels(entry.name).inc()
        log.info("loaded model %s version %d in %.2f s", entry.name, entry.version, time.perf_counter() - started)
        return loaded

    def readiness(self) -> dict[str, str]:
        """Loads every active version (so a ready process answers fast) and reports them."""
        self.invalidate()
        self._refresh()
        if not self._active:
            return {"status": "no active model yet"}
        return {name: f"version {self.get(name).version} loaded" for name in sorted(self._active)}
