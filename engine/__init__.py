"""gradwire's backpropagation engine: vectorised NumPy, nothing else.

>>> import numpy as np
>>> from gradwire.engine import Dense, NetworkSpec, Network, TrainConfig, fit
>>> spec = NetworkSpec(2, [Dense(4, "tanh", "xavier_uniform"), Dense(1, "sigmoid", "xavier_uniform")],
...                    loss="binary_crossentropy", seed=1)
>>> net = Network(spec)
>>> loss, grads = net.loss_and_gradients(np.zeros((3, 2)), np.ones((3, 1)))
>>> sorted(grads)
['0.W', '0.b', '1.W', '1.b']
"""

from .activations import ACTIVATIONS
from .config import OptimizerConfig, ScheduleConfig, TrainConfig
from .data import one_hot
from .errors import EngineError, InvalidArgument
from .gradcheck import GradCheck, check_gradients, numerical_gradients
from .initializers import INITIALIZERS
from .losses import FUSED_DELTAS, LOSSES
from .network import Network
from .optimizers import OPTIMIZERS, OptimizerState
from .schedules import FORMULAS
from .spec import BatchNorm, Dense, NetworkSpec, Residual
from .state import TrainingState, carry_optimizer_state, export_state, final_state, restore_trainer
from .training import STOP_REASONS, EpochRecord, FitResult, Trainer, fit

__all__ = [
    "ACTIVATIONS",
    "FORMULAS",
    "FUSED_DELTAS",
    "INITIALIZERS",
    "LOSSES",
    "OPTIMIZERS",
    "STOP_REASONS",
    "BatchNorm",
    "Dense",
    "EngineError",
    "EpochRecord",
    "FitResult",
    "GradCheck",
    "InvalidArgument",
    "Network",
    "NetworkSpec",
    "OptimizerConfig",
    "OptimizerState",
    "Residual",
    "ScheduleConfig",
    "TrainConfig",
    "Trainer",
    "TrainingState",
    "carry_optimizer_state",
    "check_gradients",
    "export_state",
    "final_state",
    "fit",
    "numerical_gradients",
    "one_hot",
    "restore_trainer",
]
