"""The bundled synthetic demo data set: users in planted taste groups rating items of four genres, so a
trained model can be checked by eye (a group's recommendations should come from the genre it loves).
Generated deterministically from a seed; MovieLens is not redistributable (``rbmrec import`` reads it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GENRES = ("Space Opera", "Costume Drama", "Creature Horror", "Slapstick Comedy")
# taste[g][genre]: mean rating group g gives a genre (1..5 scale).
TASTE = np.array([
    [4.6, 2.0, 3.2, 1.6],
    [1.8, 4.6, 1.5, 3.3],
    [3.1, 1.5, 4.6, 2.0],
    [1.6, 3.2, 2.0, 4.6],
])


@dataclass
class DemoData:
    users: list[tuple[str, dict]]           # (external id, attributes)
    items: list[tuple[str, str, dict]]      # (external id, title, attributes)
    ratings: list[tuple[str, str, int]]     # (user, item, rating)


def generate(num_users: int = 600, items_per_genre: int = 50, ratings_per_user: int = 30, seed: int = 7) -> DemoData:
    rng = np.random.default_rng(seed)
    num_genres = len(GENRES)
    items = [(f"item-{g * items_per_genre + j + 1:04d}", f"{GENRES[g]} #{j + 1}", {"genre": GENRES[g]})
             for g in range(num_genres) for j in range(items_per_genre)]
    item_genre = np.repeat(np.arange(num_genres), items_per_genre)
    # Each item has its own quality offset, so items within a genre differ.
    quality = rng.normal(0.0, 0.4, len(items))
    groups = rng.integers(0, num_genres, num_users)
    users = [(f"user-{u + 1:04d}", {"taste_group": GENRES[groups[u]]}) for u in range(num_users)]
    ratings: list[tuple[str, str, int]] = []
    for u in range(num_users):
        g = groups[u]
        # People mostly watch what they like: the loved genre is sampled three times as often.
        weight = np.where(item_genre == g, 3.0, 1.0)
        chosen = rng.choice(len(items), size=ratings_per_user, replace=False, p=weight / weight.sum())
        mean = TASTE[g, item_genre[chosen]] + quality[chosen]
        values = np.clip(np.rint(mean + rng.normal(0.0, 0.6, len(chosen))), 1, 5).astype(int)
        ratings.extend((users[u][0], items[i][0], int(v)) for i, v in zip(chosen, values, strict=True))
    return DemoData(users, items, ratings)


DEMO_MODEL = {
    "name": "demo",
    "kind": "rbm",
    "orientation": "user",
    "description": "softmax RBM on the synthetic demo data (rbmrec demo)",
    "hyperparameters": {"num_hidden": 24, "epochs": 12, "batch_size": 32, "learning_rate": 0.3, "patience": 12,
                        "averaging": 0.0, "engagement_hidden": 16, "engagement_epochs": 5},
}
