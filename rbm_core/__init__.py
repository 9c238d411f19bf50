"""rbm_core: energy-based models in the Boltzmann-Gibbs form p(x) = exp(-E(x)) / Z, in PyTorch.

Depends on torch and numpy only; never imports the service."""

from rbm_core.estimators import ContrastiveDivergence, PersistentContrastiveDivergence
from rbm_core.io import ModelFileError, load_model, model_from_bytes, model_to_bytes, save_model
from rbm_core.models import RBM, RBMConfig
from rbm_core.samplers import BlockGibbs, ChainState
from rbm_core.training import EarlyStopping, Trainer, TrainingDiverged, default_device
from rbm_core.units import BernoulliUnits, InvalidInputError, SoftmaxUnits

__all__ = [
    "RBM",
    "RBMConfig",
    "BernoulliUnits",
    "SoftmaxUnits",
    "InvalidInputError",
    "BlockGibbs",
    "ChainState",
    "ContrastiveDivergence",
    "PersistentContrastiveDivergence",
    "Trainer",
    "EarlyStopping",
    "TrainingDiverged",
    "default_device",
    "save_model",
    "load_model",
    "model_to_bytes",
    "model_from_bytes",
    "ModelFileError",
]
