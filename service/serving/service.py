"""Scoring with the active model: a user's ratings (one indexed query) -> the version's dense indices ->
one pass over the model -> item ids. Users the version was not trained on are folded in from their ratings;
with no usable ratings, the answer is the most-rated items, labelled ``popularity``."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.catalog import repository as catalog_repository
from service.catalog.models import Item
from service.errors import ApiError, not_found
from service.ratings import repository as ratings_repository
from service.serving.cache import LoadedModel


@dataclass
class Known:
    """A user's (or an ad-hoc session's) ratings in the model's index space."""

    user: str | None
    item_idx: torch.Tensor
    ratings: torch.Tensor
    user_index: int | None  # the training row, when the version was trained on this user
    source: str


def _encode(loaded: LoadedModel, pairs: list[tuple[int, int]], user: str | None, user_internal: int | None) -> Known:
    lookup = loaded.item_lookup
    if pairs and lookup is not None:  # vectorised: internal id -> dense index (-1: not in the version)
        rows = np.array(pairs, dtype=np.int64)
        ids = rows[:, 0]
        found = np.full(len(ids), -1, dtype=np.int64)
        inside = (ids >= 0) & (ids < len(lookup))
        found[inside] = lookup[ids[inside]]
        keep = found >= 0
        item_idx, ratings = torch.from_numpy(found[keep]), torch.from_numpy(rows[keep, 1])
    else:
        position = loaded.item_position
        kept = [(position[i], v) for i, v in pairs if i in position]
        item_idx = torch.tensor([p for p, _ in kept], dtype=torch.long)
        ratings = torch.tensor([v for _, v in kept], dtype=torch.long)
    user_index = loaded.user_position.get(user_internal) if user_internal is not None else None
    if not item_idx.numel() and (user_index is None or loaded.orientation == "user"):
        source = "popularity"
    elif user_index is not None:
        source = "model"
    else:
        source = "fold_in"
    # A user-based model scores from the ratings alone; the index matters for the item-based orientation.
    return Known(user, item_idx, ratings, user_index if loaded.orientation == "item" else None, source)


def known_for_user(session: Session, loaded: LoadedModel, user: str) -> Known:
    user_id, pairs = ratings_repository.user_pairs(session, external_id=user)
    if user_id is None:
        raise not_found("user", user)
    return _encode(loaded, pairs, user, user_id)


def known_for_user_read(database, loaded: LoadedModel, user: str) -> Known:
    """``known_for_user`` for a read-only request that holds no session: one autocommit statement."""
    user_id, pairs = ratings_repository.user_pairs_read(database, external_id=user)
    if user_id is None:
        raise not_found("user", user)
    return _encode(loaded, pairs, user, user_id)


def known_ad_hoc(session: Session, loaded: LoadedModel, ratings: list[dict], scale: int) -> Known:
    seen: set[str] = set()
    for position, row in enumerate(ratings):
        if row["item"] in seen:
            raise ApiError(422, f"ratings[{position}]: item {row['item']!r} appears twice",
                           details=[{"loc": ["body", "ratings", position, "item"], "msg": "duplicate item"}])
        seen.add(row["item"])
        if not 1 <= row["rating"] <= scale:
            raise ApiError(422, f"ratings[{position}]: rating {row['rating']} is not between 1 and {scale}",
                           details=[{"loc": ["body", "ratings", position, "rating"], "msg": "out of range"}])
    ids = item_ids(session, [r["item"] for r in ratings])
    return _encode(loaded, [(ids[r["item"]], r["rating"]) for r in ratings], None, None)


def item_ids(session: Session, external_ids: list[str]) -> dict[str, int]:
    """external -> internal ids; 404 naming the first unknown item."""
    if not external_ids:
        return {}
    found: dict[str, int] = {}
    unique = list(dict.fromkeys(external_ids))
    for start in range(0, len(unique), 5000):
        found.update({e: i for i, e in session.execute(
            select(Item.id, Item.external_id).where(Item.external_id.in_(unique[start:start + 5000])))})
    missing = [e for e in unique if e not in found]
    if missing:
        raise ApiError(404, f"item {missing[0]!r} not found" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return found


def item_names(session: Session | Callable[[], Session], loaded: LoadedModel,
               internal: list[int]) -> dict[int, tuple[str, str | None]]:
    """internal id -> (external id, title) of the items that exist, from the loaded version's name cache, querying
    only the ids it lacks or holds for longer than its ``names_max_age``. ``session``: a session, or a session
    factory to open one with only when a query is needed."""
    now = time.monotonic()
    cache = loaded.names
    found: dict[int, tuple[str, str | None]] = {}
    missing = []
    for iid in internal:
        hit = cache.get(iid)
        if hit is not None and now - hit[2] < loaded.names_max_age:
            found[iid] = (hit[0], hit[1])
        else:
            missing.append(iid)
    if missing:
        if isinstance(session, Session):
            fetched = catalog_repository.external_ids_for(session, Item, missing)
        else:
            with session() as opened:
                fetched = catalog_repository.external_ids_for(opened, Item, missing)
        for iid in missing:
            if iid in fetched:
                found[iid] = fetched[iid]
                cache[iid] = (*fetched[iid], now)
            else:  # deleted: not named, not cached
                cache.pop(iid, None)
    return found


def check_limits(*, n: int, offset: int, max_n: int) -> None:
    if n > max_n:
        raise ApiError(422, f"n must be at most {max_n}", details=[{"loc": ["query", "n"], "msg": "too large"}])


def recommend(session: Session | Callable[[], Session], loaded: LoadedModel, known: Known, *, n: int, offset: int,
              exclude_rated: bool) -> dict:
    model = loaded.model
    if known.source == "popularity":
        ranked = [(i, s, None) for i, s in model.popular_items(n, offset)]
        with loaded.slot:
            expected = model.expected_rating([], [], items=[i for i, _, _ in ranked]) if ranked else []
        ranked = [(i, s, float(e)) for (i, s, _), e in zip(ranked, expected, strict=True)]
    else:
        with loaded.slot:
            ranked = model.recommend(known.item_idx, known.ratings, n=n, offset=offset, exclude_known=exclude_rated,
                                     user_index=known.user_index)
    internal = [int(loaded.item_ids[i]) for i, _, _ in ranked]
    names = item_names(session, loaded, internal)
    items = [{"item": names[iid][0], "title": names[iid][1], "score": score, "expected_rating": expected}
             for iid, (_, score, expected) in zip(internal, ranked, strict=True) if iid in names]
    return {"user": known.user, "model": loaded.name, "version": loaded.version, "source": known.source,
            "n": n, "offset": offset, "items": items}


def recommendations_json(result: dict) -> bytes:
    """``recommend``'s answer as the JSON body of RecommendationsOut (compact, like FastAPI's own rendering;
    a non-finite number, which the scoring never returns, would be null as pydantic writes it)."""
    for item in result["items"]:
        for key in ("score", "expected_rating"):
            if not math.isfinite(item[key]):
                item[key] = None
    return json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def predict(session: Session, loaded: LoadedModel, known: Known, items: list[str]) -> dict:
    model = loaded.model
    ids = item_ids(session, items)
    positions = [loaded.item_position.get(ids[e]) for e in items]
    in_model = [p for p in positions if p is not None]
    with loaded.slot:
        probs = model.predict_proba(known.item_idx, known.ratings, items=in_model, user_index=known.user_index) \
            if in_model else torch.zeros(0, model.num_values)
    # An item the version has never seen: the model's global rating histogram.
    prior = model.global_hist.to(torch.float64)
    values = torch.arange(1, model.num_values + 1, dtype=torch.float64)
    out, row = [], 0
    for external, position in zip(items, positions, strict=True):
        if position is None:
            p = prior
        else:
            p = probs[row].to(torch.float64)
            row += 1
        out.append({"item": external, "probabilities": [float(x) for x in p], "expected_rating": float(p @ values),
                    "known_to_model": position is not None})
    return {"user": known.user, "model": loaded.name, "version": loaded.version, "source": known.source,
            "predictions": out}


def reconstruct(session: Session, loaded: LoadedModel, known: Known, *, items: list[str], steps: int, samples: int,
                seed: int | None) -> dict:
    model = loaded.model
    ids = item_ids(session, items)
    kept = [(e, loaded.item_position[ids[e]]) for e in dict.fromkeys(items) if ids[e] in loaded.item_position]
    ignored = [e for e in dict.fromkeys(items) if ids[e] not in loaded.item_position]
    result: list[dict] = []
    if kept:
        with loaded.slot:
            drawn, free_energy = model.reconstruct(known.item_idx, known.ratings, items=[p for _, p in kept],
                                                   steps=steps, num_samples=samples, seed=seed,
                                                   user_index=known.user_index)
        for s in range(drawn.shape[0]):
            result.append({"ratings": {e: int(drawn[s, j]) for j, (e, _) in enumerate(kept)},
                           "free_energy": float(free_energy[s])})
    return {"user": known.user, "model": loaded.name, "version": loaded.version, "steps": steps, "seed": seed,
            "ignored_items": ignored, "samples": result}
