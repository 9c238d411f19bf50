"""The activation gate: a new version replaces the active one only if its held-out error is not worse than
the active version's on the same held-out ratings by more than a tolerance (default: RMSE, 1%).

"The same split": the active version is scored on the new run's held-out ratings (those of its users and
items it knows), and so is the candidate, so both numbers come from the same pairs. Configured per model
definition in its ``gate`` JSON: ``{"metric": "rmse" | "mae", "max_regression": 0.01, "enabled": true,
"min_pairs": 20}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch

METRICS = ("rmse", "mae")


@dataclass(frozen=True)
class GateConfig:
    metric: str = "rmse"
    # Largest allowed relative increase of the error over the active version's (0.01 = 1% worse).
    max_regression: float = 0.01
    # False: every successful run is activated.
    enabled: bool = True
    # Below this many shared held-out pairs the gate compares the stored metrics of both versions instead.
    min_pairs: int = 20

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GateConfig:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown gate setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        config = cls(**data)
        if config.metric not in METRICS:
            raise ValueError(f"gate metric must be one of {', '.join(METRICS)}, not {config.metric!r}")
        if not (isinstance(config.max_regression, (int, float)) and 0 <= config.max_regression < 10):
            raise ValueError("gate max_regression must be a number in [0, 10)")
        if not isinstance(config.enabled, bool):
            raise ValueError("gate enabled must be true or false")
        if not (isinstance(config.min_pairs, int) and config.min_pairs >= 1):
            raise ValueError("gate min_pairs must be a positive integer")
        return config


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    candidate: float | None = None
    incumbent: float | None = None
    pairs: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reason": self.reason,
            "candidate": self.candidate,
            "incumbent": self.incumbent,
            "pairs": self.pairs,
        }


def decide(
    config: GateConfig,
    *,
    candidate: float | None,
    incumbent: float | None,
    incumbent_version: int | None,
    pairs: int = 0,
    basis: str = "the same held-out ratings",
) -> GateDecision:
    """Compare the candidate's error with the active version's (``incumbent``; None when there is no
    active version)."""
    name = config.metric.upper()
    if candidate is None or not math.isfinite(candidate):
        return GateDecision(False, f"held-out {name} is {candidate}; not activated", candidate, incumbent, pairs)
    if not config.enabled:
        return GateDecision(True, "gate disabled: activated", candidate, incumbent, pairs)
    if incumbent_version is None:
        return GateDecision(True, f"no active version: activated (held-out {name} {candidate:.4f})", candidate, None)
    if incumbent is None or not math.isfinite(incumbent):
        return GateDecision(True, f"active version {incumbent_version} has no usable {name}: activated", candidate)
    limit = incumbent * (1.0 + config.max_regression)
    comparison = (
        f"{name} {candidate:.4f} vs active version {incumbent_version}'s {incumbent:.4f} on {basis}"
        f" ({pairs} pairs; allowed up to {limit:.4f}, +{100 * config.max_regression:g}%)"
    )
    if candidate <= limit:
        return GateDecision(True, "passed the gate: " + comparison, candidate, incumbent, pairs)
    return GateDecision(False, "kept inactive by the gate: " + comparison, candidate, incumbent, pairs)


def pair_errors(probs: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """RMSE and MAE of the expected rating under ``probs`` ``(P, K)`` against ratings ``(P,)`` in 1..K."""
    if len(truth) == 0:
        return {"rmse": math.nan, "mae": math.nan}
    values = torch.arange(1, probs.shape[-1] + 1, dtype=torch.float64)
    error = probs.double() @ values - truth.double()
    return {"rmse": float(error.pow(2).mean().sqrt()), "mae": float(error.abs().mean())}
