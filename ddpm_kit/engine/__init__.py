"""The engine: what runs a recipe, one module per part (docs/architecture.md lists them)."""

from .checkpoints import load_run_model, make_ema
from .components import Components, build_components
from .distributed import process_state
from .evaluation import EvalContext, compute_metrics, evaluate
from .fast_paths import autocast_for, correct_compiled_gradients
from .sampling import sample_images, sample_run
from .splits import RunData
from .stops import GracefulStop, NonFiniteError
from .training import Trainer

__all__ = [
    "Components", "EvalContext", "GracefulStop", "NonFiniteError", "RunData", "Trainer",
    "autocast_for", "build_components", "compute_metrics", "correct_compiled_gradients", "evaluate",
    "load_run_model", "make_ema", "process_state", "sample_images", "sample_run",
]
