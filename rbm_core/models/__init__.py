"""Boltzmann machines: restricted (RBM), deep (DBM) and general (BoltzmannMachine)."""

from rbm_core.io import register_model
from rbm_core.models.bm import BMConfig, BoltzmannMachine, TwoPhaseEstimator
from rbm_core.models.dbm import DBM, DBMConfig, greedy_pretrain
from rbm_core.models.rbm import RBM, RBMConfig

register_model("rbm", RBM, RBMConfig)
register_model("bm", BoltzmannMachine, BMConfig)
register_model("dbm", DBM, DBMConfig)

__all__ = ["RBM", "RBMConfig", "BoltzmannMachine", "BMConfig", "TwoPhaseEstimator", "DBM", "DBMConfig", "greedy_pretrain"]
