"""``python tests/late_rank.py ARGS``: ``ddpm-kit ARGS`` in which the process of rank 1 writes its
random state into each checkpoint 0.3 s late, as a slower node does (tests/test_distributed_faults.py)."""

import os
import time

import torch

if os.environ.get("RANK") == "1":
    save = torch.save

    def late_save(obj, f, *args, **kwargs):
        if "random_states" in str(f):
            time.sleep(0.3)
        return save(obj, f, *args, **kwargs)

    torch.save = late_save

from ddpm_kit.cli import entry  # noqa: E402

entry()
