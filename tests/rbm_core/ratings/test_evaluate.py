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
