"""rbm_core: energy-based models in the Boltzmann-Gibbs form p(x) = exp(-E(x)) / Z, in PyTorch.

Depends on torch and numpy only; never imports the service."""

from rbm_core.ais import AISResult, ais_log_likelihood, ais_log_partition
from rbm_core.estimators import ContrastiveDivergence, PersistentContrastiveDivergence
from rbm_core.io import ModelFileError, load_model, model_from_bytes, model_to_bytes, save_model
from rbm_core.models import DBM, RBM, BMConfig, BoltzmannMachine, DBMConfig, RBMConfig, TwoPhaseEstimator
from rbm_core.samplers import BlockGibbs, ChainState, SingleSiteGibbs
from rbm_core.tempering import ParallelTempering, ParallelTemperingEstimator, geometric_ladder
from rbm_core.training import EarlyStopping, Trainer, TrainingDiverged, default_device
from rbm_core.units import BernoulliUnits, InvalidInputError, SoftmaxUnits

__all__ = [
    "RBM",
    "RBMConfig",
    "DBM",
    "DBMConfig",
    "BoltzmannMachine",
    "BMConfig",
    "BernoulliUnits",
    "SoftmaxUnits",
    "InvalidInputError",
    "BlockGibbs",
    "SingleSiteGibbs",
    "ChainState",
    "ParallelTempering",
    "geometric_ladder",
    "ContrastiveDivergence",
    "PersistentContrastiveDivergence",
    "ParallelTemperingEstimator",
    "TwoPhaseEstimator",
    "Trainer",
    "EarlyStopping",
    "TrainingDiverged",
    "default_device",
    "ais_log_partition",
    "ais_log_likelihood",
    "AISResult",
    "save_model",
    "load_model",
    "model_to_bytes",
    "model_from_bytes",
    "ModelFileError",
]
