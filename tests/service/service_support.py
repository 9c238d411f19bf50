"""Data and model helpers shared by the service tests (imported by name: a module called ``conftest``
is ambiguous when the whole suite runs)."""

from __future__ import annotations

import numpy as np

from service.db import Database
from service.models import service as registry
from service.models.training import activate, train_model_version
from service.ratings.loader import load_rows

# Learns the planted tastes below in about a second.
TINY = {"num_hidden": 6, "epochs": 20, "batch_size": 4, "learning_rate": 0.3, "momentum": 0.5,
        "k_schedule": [[0, 1]], "ranking": "rating", "patience": 1000, "averaging": 0.0}


def planted_ratings(num_users: int = 40, items_per_group: int = 8, per_user: int = 8, seed: int = 0):
    """Two taste groups: group g rates its own items 4-5 and the other group's 1-2. Users ``u000``...,
    items ``a00``... (group 0) and ``b00``... (group 1)."""
    rng = np.random.default_rng(seed)
    items = [f"a{j:02d}" for j in range(items_per_group)] + [f"b{j:02d}" for j in range(items_per_group)]
    rows = []
    for u in range(num_users):
        group = u % 2
        for j in rng.choice(len(items), size=per_user, replace=False):
            own = (j < items_per_group) == (group == 0)
            value = int(rng.integers(4, 6)) if own else int(rng.integers(1, 3))
            rows.append((f"u{u:03d}", items[j], value))
    return rows


def load_planted(database: Database, rows=None) -> list[tuple[str, str, int]]:
    rows = rows if rows is not None else planted_ratings()
    with database.engine.begin() as conn:
        load_rows(conn, ((n, u, i, v, None) for n, (u, i, v) in enumerate(rows)))
    return rows


def define_and_train(database: Database, name: str = "tiny", *, hyperparameters: dict | None = None,
                     orientation: str = "user", activate_it: bool = True):
    with database.session_factory() as session, session.begin():
        from service.models import repository

        definition = repository.definition_by_name(session, name)
        if definition is None:
            definition = registry.create_definition(session, fields={
                "name": name, "kind": "rbm", "orientation": orientation,
                "hyperparameters": hyperparameters or TINY, "holdout_fraction": 0.2, "description": None,
                "schedule_interval_seconds": None, "schedule_cron": None, "trigger_new_ratings": False, "gate": {}})
        elif hyperparameters is not None:
            definition.hyperparameters = hyperparameters
        definition_id = definition.id
    version = train_model_version(session_factory=database.session_factory, definition_id=definition_id, device="cpu")
    if activate_it:
        activate(session_factory=database.session_factory, version_id=version.id)
    return version
