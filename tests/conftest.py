import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import ENV, TINY, cli  # noqa: E402


@pytest.fixture
def registry():
    from ddpm_kit.plugins import get_registry

    return get_registry(entry_points=False)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Feature networks trained by the tests go to a private cache, never the user's."""
    cache = str(tmp_path_factory.mktemp("cache"))
    ENV["DDPM_KIT_CACHE"] = cache
    old = os.environ.get("DDPM_KIT_CACHE")
    os.environ["DDPM_KIT_CACHE"] = cache
    yield
    if old is None:
        os.environ.pop("DDPM_KIT_CACHE", None)
    else:
        os.environ["DDPM_KIT_CACHE"] = old


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """The tiny recipe trained for 8 steps, sampled and evaluated (shared by the slow tests)."""
    run = tmp_path_factory.mktemp("e2e") / "run"
    result = cli("run", str(TINY), "--run-dir", str(run), "--set", "train.steps=8")
    assert result.returncode == 0, result.stderr
    return run, result


@pytest.fixture
def fresh_accelerate_state():
    """For tests that train in this process: accelerate's shared state is reset afterwards, so no
    Accelerator settings leak into later tests."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
