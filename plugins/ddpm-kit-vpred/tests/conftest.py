import pytest


@pytest.fixture
def registry():
    from ddpm_kit.plugins import get_registry

    registry = get_registry()
    assert registry.resolve("parameterization", "v").plugin.distribution == "ddpm-kit-vpred"
    return registry


@pytest.fixture
def fresh_accelerate_state():
    """For tests that train in this process: accelerate's shared state is reset afterwards."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
