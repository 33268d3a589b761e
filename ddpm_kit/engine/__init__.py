"""The engine: what runs a recipe. One module per part:

- ``components``: the recipe's plugins, built (diffusion, objective, sampler, backbone); ``splits``: its data
- ``batches``: the global batch of each training step, batches decoded ahead
- ``distributed``: the accelerate state, the launcher, work split by batch and gathered in order
- ``training``: the ``Trainer`` (set-up, resume, one step, logging, evaluation, checkpoints and the best, finish)
- ``dropout``: dropout masks of the global batch; ``stops``: Ctrl-C and non-finite steps
- ``fast_paths``: mixed precision, channels-last and torch.compile, and what a run computed in
- ``checkpoints``: atomic checkpoints, EMA, final weights, safe loading
- ``sampling``: samples split over processes, each image a function of (seed, index); the sampling stage
- ``evaluation``: metrics on every process, ``EvalContext``, the one metric loop; the evaluation stage
- ``trackers``: experiment trackers (TensorBoard, W&B, MLflow, ...), guarded
"""

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
