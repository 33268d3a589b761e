"""The engine: what runs a recipe, one module per part (docs/architecture.md lists them)."""

from .checkpoints import ema_state_dict, ema_weights, load_run_model, make_ema, save_checkpoint
from .components import Components, build_components
from .distributed import LocalState, describe, process_state
from .evaluation import EvalContext, compute_metrics, evaluate
from .fast_paths import autocast_for, correct_compiled_gradients, quiet_known_dynamo_warnings
from .sampling import sample_images, sample_run
from .splits import RunData
from .stops import GracefulStop, Interrupted, NonFiniteError, StopAgreement
from .training import Trainer

__all__ = [
    "Components", "EvalContext", "GracefulStop", "Interrupted", "LocalState", "NonFiniteError", "RunData",
    "StopAgreement", "Trainer",
    "autocast_for", "build_components", "compute_metrics", "correct_compiled_gradients", "describe",
    "ema_state_dict", "ema_weights", "evaluate", "load_run_model", "make_ema", "process_state",
    "quiet_known_dynamo_warnings", "sample_images", "sample_run", "save_checkpoint",
]
