"""Boltzmann machines: restricted (RBM), deep (DBM) and general (BoltzmannMachine)."""

from rbm_core.io import register_model
from rbm_core.models.rbm import RBM, RBMConfig

register_model("rbm", RBM, RBMConfig)

__all__ = ["RBM", "RBMConfig"]
