"""The engine: what runs a recipe. One module per part:

- ``components``: the recipe's plugins, built (diffusion, objective, sampler, backbone, dataset)
- ``data``: prepared splits and the global batch of each training step
- ``distributed``: the accelerate state, the launcher, work split by batch and gathered in order
- ``training``: the training loop (accelerate), Ctrl-C and non-finite steps
- ``checkpoints``: atomic checkpoints, EMA, final weights, safe loading
- ``sampling``: samples split over processes, each image a function of (seed, index)
- ``evaluation``: metrics on every process, EvalContext
"""

from .checkpoints import ema_state_dict, ema_weights, load_run_model, make_ema, save_checkpoint
from .components import Components, build_components
from .data import global_batch, load_split, step_generator
from .distributed import LocalState, describe, process_state
from .evaluation import EvalContext, evaluate
from .sampling import autocast_for, quiet_known_dynamo_warnings, sample_images
from .training import GracefulStop, Interrupted, NonFiniteError, correct_compiled_gradients, train

__all__ = [
    "Components", "EvalContext", "GracefulStop", "Interrupted", "LocalState", "NonFiniteError", "autocast_for",
    "build_components", "correct_compiled_gradients", "describe", "ema_state_dict", "ema_weights", "evaluate",
    "global_batch", "load_run_model", "load_split", "make_ema", "process_state", "quiet_known_dynamo_warnings",
    "sample_images", "save_checkpoint", "step_generator", "train",
]
