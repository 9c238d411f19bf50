"""Rating data: the validated ``RatingMatrix`` (coordinate triples over dense indices), loaders for
the MovieLens formats and plain CSV with id remapping, and the seeded evaluation splits."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor


class RatingDataError(ValueError):
    """Malformed rating data; the message names the file and line where there is one."""


@dataclass(frozen=True, eq=False)
class RatingMatrix:
    """Sparse ratings as coordinate triples over dense 0-based indices.

    ``users``, ``items``: LongTensor ``(n,)`` in ``[0, num_users)`` / ``[0, num_items)``;
    ``ratings``: LongTensor ``(n,)`` in ``1..num_values``. A (user, item) pair appears at most once.
    ``user_ids`` / ``item_ids`` optionally give the external id of each dense index (loaders fill
    them); ``timestamps`` is optional, ``(n,)``.
    """

    users: Tensor
    items: Tensor
    ratings: Tensor
    num_users: int
    num_items: int
    num_values: int = 5
    user_ids: tuple[str, ...] | None = field(default=None, repr=False)
    item_ids: tuple[str, ...] | None = field(default=None, repr=False)
    timestamps: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("users", "items", "ratings"):
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                value = torch.as_tensor(value)
            if value.dim() != 1:
                raise RatingDataError(f"{name} must be a 1-d tensor, got shape {tuple(value.shape)}")
            if value.is_floating_point():
                if not bool((value == value.round()).all()):
                    raise RatingDataError(f"{name} must hold whole numbers")
            object.__setattr__(self, name, value.long().cpu())
        n = self.users.numel()
        if self.items.numel() != n or self.ratings.numel() != n:
            raise RatingDataError(
                f"users, items and ratings differ in length ({n}, {self.items.numel()}, {self.ratings.numel()})"
            )
        if self.num_users < 0 or self.num_items < 0:
            raise RatingDataError("num_users and num_items must be non-negative")
        if self.num_values < 2:
            raise RatingDataError("num_values must be at least 2")
        if n:
            _check_range(self.users, 0, self.num_users - 1, "user index")
            _check_range(self.items, 0, self.num_items - 1, "item index")
            _check_range(self.ratings, 1, self.num_values, "rating")
            key = self.users * max(self.num_items, 1) + self.items
            if torch.unique(key).numel() != n:
                raise RatingDataError("a (user, item) pair appears more than once")
        if self.user_ids is not None and len(self.user_ids) != self.num_users:
            raise RatingDataError("user_ids must name every user index")
        if self.item_ids is not None and len(self.item_ids) != self.num_items:
            raise RatingDataError("item_ids must name every item index")
        if self.timestamps is not None:
            object.__setattr__(self, "timestamps", torch.as_tensor(self.timestamps).long().cpu())
            if self.timestamps.shape != (n,):
                raise RatingDataError("timestamps must have one entry per rating")

    def __len__(self) -> int:
        return self.users.numel()

    @property
    def mean(self) -> float:
        return float(self.ratings.double().mean()) if len(self) else (1 + self.num_values) / 2

    def subset(self, selection: Tensor) -> RatingMatrix:
        """The ratings at a boolean mask or an index tensor, same index space."""
        return RatingMatrix(
            self.users[selection],
            self.items[selection],
            self.ratings[selection],
            self.num_users,
            self.num_items,
            self.num_values,
            self.user_ids,
            self.item_ids,
            None if self.timestamps is None else self.timestamps[selection],
        )

    def concat(self, other: RatingMatrix) -> RatingMatrix:
        """Both sets of ratings (same index space; pairs must not overlap)."""
        if (other.num_users, other.num_items, other.num_values) != (self.num_users, self.num_items, self.num_values):
            raise RatingDataError("cannot concatenate rating matrices over different index spaces")
        ts = None
        if self.timestamps is not None and other.timestamps is not None:
            ts = torch.cat([self.timestamps, other.timestamps])
        return RatingMatrix(
            torch.cat([self.users, other.users]),
            torch.cat([self.items, other.items]),
            torch.cat([self.ratings, other.ratings]),
            self.num_users,
            self.num_items,
            self.num_values,
            self.user_ids,
            self.item_ids,
            ts,
        )

    def transpose(self) -> RatingMatrix:
        """Items become users and users items (the item-based view)."""
        return RatingMatrix(
            self.items, self.users, self.ratings, self.num_items, self.num_users, self.num_values,
            self.item_ids, self.user_ids, self.timestamps,
        )

    def row_pointers(self) -> tuple[Tensor, Tensor, Tensor]:
        """CSR view by user: ``(indptr (num_users+1,), items, ratings)`` with each user's ratings
        contiguous (sorted by user, then item)."""
        order = torch.argsort(self.users * max(self.num_items, 1) + self.items)
        counts = torch.bincount(self.users, minlength=self.num_users)
        indptr = torch.zeros(self.num_users + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(counts, 0)
        return indptr, self.items[order], self.ratings[order]

    def user_counts(self) -> Tensor:
        return torch.bincount(self.users, minlength=self.num_users)

    def item_counts(self) -> Tensor:
        return torch.bincount(self.items, minlength=self.num_items)

    def user_ratings(self, user: int) -> tuple[Tensor, Tensor]:
        """One user's (item indices, ratings)."""
        rows = self.users == user
        return self.items[rows], self.ratings[rows]


def _check_range(values: Tensor, low: int, high: int, what: str) -> None:
    bad = (values < low) | (values > high)
    if bool(bad.any()):
        position = int(bad.nonzero()[0, 0])
        raise RatingDataError(
            f"{what} {int(values[position])} at position {position} is outside {low}..{high}"
        )


# -- loaders ------------------------------------------------------------------------------------

_FORMATS = ("auto", "udata", "dat", "csv")


def load_ratings(path: str | Path, format: str = "auto", num_values: int = 5) -> RatingMatrix:
    """Read ratings from ``path`` and remap the external ids to dense indices (in order of first
    appearance).

    Formats: ``"udata"`` (MovieLens 100K ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``),
    ``"dat"`` (MovieLens 1M ``ratings.dat``: ``user::item::rating::timestamp``), ``"csv"``
    (``user,item,rating[,timestamp]``, an optional header line whose third field is not a number).
    ``"auto"`` picks by the first data line's separator. Ratings must be whole numbers in
    ``1..num_values`` (``4.0`` is accepted; ``3.5`` is not). Any malformed line raises
    ``RatingDataError`` naming the file and the 1-based line number.
    """
    path = Path(path)
    if format not in _FORMATS:
        raise ValueError(f"unknown ratings format {format!r}; expected one of {_FORMATS}")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise RatingDataError(f"cannot read {path}: {exc}") from exc
    return parse_ratings(text, format=format, num_values=num_values, source=str(path))


def parse_ratings(text: str, format: str = "auto", num_values: int = 5, source: str = "<text>") -> RatingMatrix:
    """``load_ratings`` on a string."""
    lines = text.splitlines()
    if format == "auto":
        format = _detect_format(lines, source)
    separator = {"udata": "\t", "dat": "::", "csv": ","}[format]
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    users: list[int] = []
    items: list[int] = []
    ratings: list[int] = []
    stamps: list[int] = []
    has_stamps = None
    seen: dict[tuple[int, int], int] = {}
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        fields = [f.strip() for f in (stripped.split(separator) if format != "udata" else re.split(r"\t| +", stripped))]
        if format == "csv" and number == _first_data_line(lines) and not _is_number(fields[2] if len(fields) > 2 else ""):
            continue  # header line
        where = f"{source}, line {number}"
        if len(fields) not in (3, 4):
            raise RatingDataError(
                f"{where}: expected 3 or 4 fields separated by {separator!r} (user, item, rating[, timestamp]), "
                f"got {len(fields)}: {stripped[:80]!r}"
            )
        user, item, rating_text = fields[0], fields[1], fields[2]
        if not user or not item:
            raise RatingDataError(f"{where}: empty user or item id: {stripped[:80]!r}")
        try:
            rating_value = float(rating_text)
        except ValueError:
            raise RatingDataError(f"{where}: rating {rating_text!r} is not a number") from None
        if not math.isfinite(rating_value) or rating_value != int(rating_value):
            raise RatingDataError(f"{where}: rating {rating_text!r} is not a whole number 1..{num_values}")
        rating = int(rating_value)
        if not 1 <= rating <= num_values:
            raise RatingDataError(f"{where}: rating {rating} is outside 1..{num_values}")
        line_has_stamp = len(fields) == 4
        if has_stamps is None:
            has_stamps = line_has_stamp
        if line_has_stamp:
            try:
                stamps.append(int(float(fields[3])))
            except ValueError:
                raise RatingDataError(f"{where}: timestamp {fields[3]!r} is not a number") from None
        u = user_index.setdefault(user, len(user_index))
        i = item_index.setdefault(item, len(item_index))
        if (u, i) in seen:
            raise RatingDataError(f"{where}: user {user!r} rated item {item!r} again (first on line {seen[(u, i)]})")
        seen[(u, i)] = number
        users.append(u)
        items.append(i)
        ratings.append(rating)
    timestamps = torch.tensor(stamps, dtype=torch.long) if stamps and len(stamps) == len(users) else None
    return RatingMatrix(
        torch.tensor(users, dtype=torch.long),
        torch.tensor(items, dtype=torch.long),
        torch.tensor(ratings, dtype=torch.long),
        len(user_index),
        len(item_index),
        num_values,
        tuple(user_index),
        tuple(item_index),
        timestamps,
    )


def _first_data_line(lines: list[str]) -> int:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            return number
    return 0


def _detect_format(lines: list[str], source: str) -> str:
    number = _first_data_line(lines)
    if number == 0:
        raise RatingDataError(f"{source}: no ratings found (the file is empty)")
    line = lines[number - 1]
    if "::" in line:
        return "dat"
    if "\t" in line:
        return "udata"
    if "," in line:
        return "csv"
    raise RatingDataError(
        f"{source}, line {number}: cannot tell the format (no '::', tab or ',' separator): {line.strip()[:80]!r}"
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- splits -------------------------------------------------------------------------------------


def split_random(data: RatingMatrix, test_fraction: float = 0.1, seed: int = 0) -> tuple[RatingMatrix, RatingMatrix]:
    """Protocol 1: a uniformly random ``test_fraction`` of all ratings is the test part."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must lie in (0, 1)")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=generator)
    num_test = int(round(test_fraction * len(data)))
    test = torch.zeros(len(data), dtype=torch.bool)
    test[order[:num_test]] = True
    return data.subset(~test), data.subset(test)


def split_per_user(data: RatingMatrix, test_fraction: float = 0.25, seed: int = 0) -> tuple[RatingMatrix, RatingMatrix]:
    """Protocol 2: for every user, ``round(test_fraction * n_u)`` of their ratings (chosen at
    random, at least one kept for training) form the test part."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must lie in (0, 1)")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(len(data), generator=generator, dtype=torch.float64)
    # Rank each rating within its user by the random key: sort by (user, key).
    order = torch.argsort(data.users.double() * 2.0 + noise)
    counts = data.user_counts()
    starts = torch.zeros_like(counts)
    starts[1:] = torch.cumsum(counts, 0)[:-1]
    sorted_users = data.users[order]
    rank = torch.arange(len(data)) - starts[sorted_users]
    num_test = torch.round(counts.double() * test_fraction).long().clamp(max=(counts - 1).clamp(min=0))
    test_sorted = rank < num_test[sorted_users]
    test = torch.zeros(len(data), dtype=torch.bool)
    test[order] = test_sorted
    return data.subset(~test), data.subset(test)
