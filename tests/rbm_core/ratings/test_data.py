"""Rating loaders (u.data, ratings.dat, CSV), id remapping, clear errors naming the line, and the
seeded splits."""

import pytest
import torch

from rbm_core.ratings import RatingDataError, RatingMatrix, load_ratings, parse_ratings, split_per_user, split_random


def test_udata_dat_and_csv_load_the_same_matrix(tmp_path):
    rows = [("u7", "i3", 5, 100), ("u2", "i3", 1, 101), ("u7", "i9", 3, 102)]
    (tmp_path / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    (tmp_path / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    (tmp_path / "r.csv").write_text("user,item,rating,timestamp\n" + "".join(f"{u},{i},{r}.0,{t}\n" for u, i, r, t in rows))
    for name in ("u.data", "ratings.dat", "r.csv"):
        m = load_ratings(tmp_path / name)
        assert (m.num_users, m.num_items, len(m)) == (2, 2, 3)
        assert m.user_ids == ("u7", "u2") and m.item_ids == ("i3", "i9")
        assert m.users.tolist() == [0, 1, 0] and m.items.tolist() == [0, 0, 1]
        assert m.ratings.tolist() == [5, 1, 3]
        assert m.timestamps.tolist() == [100, 101, 102]


def test_csv_without_timestamp_or_header():
    m = parse_ratings("1,10,4\n2,10,2\n", format="csv")
    assert len(m) == 2 and m.timestamps is None


@pytest.mark.parametrize(
    "text, line, phrase",
    [
        ("1,2,3\n1,3\n", 2, "expected 3 or 4 fields"),
        ("1,2,3\n1,3,x\n", 2, "not a number"),
        ("1,2,3\n\n1,3,6\n", 3, "outside 1..5"),
        ("1,2,3\n1,3,0\n", 2, "outside 1..5"),
        ("1,2,3\n1,3,3.5\n", 2, "not a whole number"),
        ("1,2,3\n1,3,nan\n", 2, "not a whole number"),
        ("1,2,3\n1,2,4\n", 2, "again (first on line 1)"),
        ("1,2,3\n1,,4\n", 2, "empty user or item"),
        ("1,2,3\n1,4,4,yesterday\n", 2, "timestamp"),
    ],
)
def test_malformed_rows_name_the_line(text, line, phrase):
    with pytest.raises(RatingDataError) as info:
        parse_ratings(text, format="csv", source="r.csv")
    assert f"r.csv, line {line}" in str(info.value)
    assert phrase in str(info.value)


def test_malformed_dat_and_empty_file(tmp_path):
    bad = tmp_path / "ratings.dat"
    bad.write_text("1::2::3::4\n1::5::9::4\n")
    with pytest.raises(RatingDataError, match=r"ratings.dat, line 2: rating 9 is outside 1..5"):
        load_ratings(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("\n")
    with pytest.raises(RatingDataError, match="empty"):
        load_ratings(empty)
    with pytest.raises(RatingDataError, match="cannot read"):
        load_ratings(tmp_path / "missing.csv")


def test_rating_matrix_validates():
    ok = dict(users=torch.tensor([0, 1]), items=torch.tensor([1, 0]), ratings=torch.tensor([1, 5]), num_users=2, num_items=2)
    RatingMatrix(**ok)
    with pytest.raises(RatingDataError, match="rating 6"):
        RatingMatrix(**{**ok, "ratings": torch.tensor([1, 6])})
    with pytest.raises(RatingDataError, match="user index 2"):
        RatingMatrix(**{**ok, "users": torch.tensor([0, 2])})
    with pytest.raises(RatingDataError, match="more than once"):
        RatingMatrix(**{**ok, "users": torch.tensor([0, 0]), "items": torch.tensor([1, 1])})
    with pytest.raises(RatingDataError, match="differ in length"):
        RatingMatrix(**{**ok, "ratings": torch.tensor([1])})


def _random_matrix(num_users=40, num_items=30, per_user=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    users, items = [], []
    for u in range(num_users):
        chosen = torch.randperm(num_items, generator=g)[:per_user]
        users += [u] * per_user
        items += chosen.tolist()
    ratings = torch.randint(1, 6, (len(users),), generator=g)
    return RatingMatrix(torch.tensor(users), torch.tensor(items), ratings, num_users, num_items)


def test_random_split_is_seeded_disjoint_and_complete():
    m = _random_matrix()
    train, test = split_random(m, 0.1, seed=3)
    assert len(test) == round(0.1 * len(m)) and len(train) + len(test) == len(m)
    keys = lambda x: set(zip(x.users.tolist(), x.items.tolist(), strict=True))  # noqa: E731
    assert not keys(train) & keys(test) and keys(train) | keys(test) == keys(m)
    again, _ = split_random(m, 0.1, seed=3)
    assert torch.equal(again.users, train.users) and torch.equal(again.items, train.items)
    other, _ = split_random(m, 0.1, seed=4)
    assert not (torch.equal(other.users, train.users) and torch.equal(other.items, train.items))


def test_per_user_split_is_stratified():
    m = _random_matrix(per_user=12)
    train, test = split_per_user(m, 0.25, seed=1)
    assert test.user_counts().tolist() == [3] * m.num_users
    assert train.user_counts().tolist() == [9] * m.num_users
    single = RatingMatrix(torch.tensor([0]), torch.tensor([0]), torch.tensor([4]), 1, 1)
    kept, held = split_per_user(single, 0.25)
    assert len(kept) == 1 and len(held) == 0  # a user's only rating stays in training
