"""The dashboard's pure shaping of stored numbers: per-epoch metrics into chart groups, version metrics
into table columns, number formatting (hand-computed expectations)."""

from __future__ import annotations

import math

from service.admin import views


def test_job_curves_groups_metrics_and_aligns_epochs() -> None:
    epochs = [
        {"epoch": 0.0, "reconstruction_error": 1.5, "k": 1.0, "seconds": 0.1},
        {"epoch": 1.0, "reconstruction_error": 1.25, "valid_rmse": 1.1, "free_energy_gap": 0.2,
         "swap_rates": [0.5, 0.25], "seconds": 0.1},
        {"epoch": 2.0, "reconstruction_error": math.nan, "valid_rmse": 1.0, "free_energy_gap": 0.3,
         "swap_rates": [0.4, 0.2]},
    ]
    curves = views.job_curves(epochs)
    assert curves["epoch"] == [0, 1, 2]
    groups = {g["key"]: g["series"] for g in curves["groups"]}
    assert list(groups) == ["reconstruction", "rmse", "free_energy", "swap", "other"]
    assert groups["reconstruction"] == {"reconstruction_error": [1.5, 1.25, None]}  # NaN is no point
    assert groups["rmse"] == {"valid_rmse": [None, 1.1, 1.0]}  # absent in epoch 0
    assert groups["free_energy"] == {"free_energy_gap": [None, 0.2, 0.3]}
    assert groups["swap"] == {"swap_rates[0]": [None, 0.5, 0.4], "swap_rates[1]": [None, 0.25, 0.2]}
    assert groups["other"] == {"k": [1.0, None, None]}  # "seconds" and "epoch" are not curves
    assert views.job_curves([]) == {"epoch": [], "groups": []}


def test_version_row_picks_known_metric_names() -> None:
    row = views.version_row({"rmse": 0.9, "mae": 0.7, "ndcg_at_10": 0.3, "other": 5})
    headers = [h for h, _ in views.VERSION_COLUMNS]
    assert dict(zip(headers, row, strict=True)) == {"RMSE": 0.9, "MAE": 0.7, "P@10": None, "R@10": None,
                                                    "nDCG@10": 0.3, "AIS log-lik.": None}
    assert views.version_row(None) == [None] * len(headers)


def test_fmt_and_flat_metrics() -> None:
    assert views.fmt(None) == "–"
    assert views.fmt(1234567) == "1,234,567"
    assert views.fmt(0.91234) == "0.9123"
    assert views.fmt(1.38694) == "1.387"
    assert views.fmt(2.5e-5) == "2.500e-05"
    assert views.fmt(99950.0) == "99,950"
    assert views.fmt(123456.78) == "123,456.8"
    assert views.fmt(True) == "yes"
    flat = views.flat_metrics({"rmse": 0.9, "history": [{"epoch": 0}], "gate": {"passed": True, "pairs": 3}})
    assert flat == [("rmse", 0.9), ("gate.pairs", 3), ("gate.passed", True)]
