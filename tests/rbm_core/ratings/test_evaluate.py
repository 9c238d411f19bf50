"""The harness end to end on a tiny CSV: table on stdout, JSON with every figure on the last line."""

import json

import pytest

from rbm_core.ratings.evaluate import main


def test_evaluate_prints_table_and_json_last_line(tmp_path, capsys):
    rows = ["user,item,rating"]
    for user in range(50):
        for item in range(0, 40, 2 + user % 3):
            rows.append(f"u{user},i{item},{1 + (user * 7 + item) % 5}")
    path = tmp_path / "r.csv"
    path.write_text("\n".join(rows) + "\n")
    assert main(["--data", str(path), "--models", "global-mean,biases,popularity,rbm-item", "--seed", "3", "--quiet",
                 "--set", "epochs=2", "--set", "engagement_epochs=1", "--set", "num_hidden=8"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert report["seed"] == 3 and report["users"] == 50
    assert set(report["rating"]["models"]) == {"global-mean", "biases", "rbm-item"}
    assert set(report["topn"]["models"]) == {"biases", "popularity", "rbm-item"}
    for row in report["topn"]["models"].values():
        assert 0.0 <= row["ndcg@10"] <= 1.0 and 0.0 <= row["coverage"] <= 1.0
    assert any("rbm-item" in line and "|" in line for line in out[:-1])


def test_evaluate_rejects_unknown_model_and_config_key(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("1,2,3\n")
    with pytest.raises(SystemExit):
        main(["--data", str(path), "--models", "svd++"])
    with pytest.raises(ValueError, match="hiddne"):
        main(["--data", str(path), "--set", "hiddne=3"])


def test_blend_of_the_item_and_user_rbms_in_the_rating_protocol(tmp_path, capsys):
    # two planted taste groups: the blend is fitted on validation and reported with its members; per-model overrides
    # reach only their model (crbm-user.num_hidden), and the blend has no top-N row
    rows = ["user,item,rating"]
    for user in range(60):
        for item in range(0, 40):
            if (user * 13 + item * 7) % 3 == 0:
                rows.append(f"u{user},i{item},{5 if (user % 2) == (item % 2) else 1 + (user + item) % 2}")
    path = tmp_path / "r.csv"
    path.write_text("\n".join(rows) + "\n")
    assert main(["--data", str(path), "--models", "biases,rbm-blend,crbm-item-pl,crbm-user", "--quiet",
                 "--set", "epochs=3", "--set", "engagement_epochs=1", "--set", "num_hidden=6",
                 "--set", "crbm-user.num_hidden=4", "--set", "finetune_epochs=0"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rating = report["rating"]["models"]
    assert set(rating) == {"biases", "crbm-item-pl", "crbm-user", "rbm-blend"}
    assert "rbm-blend" not in report["topn"]["models"]
    # listed first, the blend trains its members, whose rows reuse them: their seconds are counted once each
    blend, members = rating["rbm-blend"], rating["crbm-item-pl"]["train_seconds"] + rating["crbm-user"]["train_seconds"]
    assert members <= blend["train_seconds"] < members + 0.5 * max(members, 1.0)
    assert blend["rmse"] < rating["biases"]["rmse"]


def test_scoped_overrides_name_their_model(tmp_path):
    from rbm_core.ratings.evaluate import _parse_overrides, rbm_config

    overrides = _parse_overrides(["num_hidden=7", "crbm-user.num_hidden=9", "crbm-user.learning_rate=0.03"])
    assert rbm_config("crbm-user", 0, overrides).num_hidden == 9
    assert rbm_config("crbm-user", 0, overrides).learning_rate == 0.03
    assert rbm_config("crbm-item", 0, overrides).num_hidden == 7
    with pytest.raises(SystemExit, match="svd"):
        _parse_overrides(["svd.num_hidden=3"])
    with pytest.raises(ValueError, match="hiddne"):
        _parse_overrides(["crbm-item.hiddne=3"])
