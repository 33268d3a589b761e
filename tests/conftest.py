import gc
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import ENV, TINY, cli, drop_modules, install_wheels, leave_the_background, low_priority_group  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEST_PACKAGES = ROOT / "tests" / "plugin_packages"  # broken, colliding and faulty plugins, and one that works
EXAMPLE_PACKAGES = ROOT / "examples" / "plugins"  # the five examples of docs/writing-a-plugin.md


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


@pytest.fixture(autouse=True, scope="session")
def started_with_the_session(request, private_cache):
    """Work that runs in processes of its own (a SLURM cluster and its jobs, a compiled run, the
    plugin packages' own test sessions) starts with the session, in the background
    (helpers.in_the_background), and fills the core that the tests in this process leave idle: the
    module of each selected test that reads ``background`` has its ``start_in_background(request)``
    called now (``request``: this fixture's, for session fixtures). The session waits for it to end."""
    torch.set_num_threads(1)  # a test's small tensors: a second OpenMP thread waits more than it helps
    modules = {item.module for item in request.session.items if reads_background(item)}
    started = {module.__name__: module.start_in_background(request) for module in modules}
    yield started
    for work in started.values():
        work.close()
    leave_the_background()


@pytest.fixture(scope="session")
def background(started_with_the_session):
    """What each module started with the session, by module name."""
    return started_with_the_session


def reads_background(item) -> bool:
    return "background" in getattr(item, "fixturenames", ())


@pytest.fixture(autouse=True)
def launches_alone(request, started_with_the_session):
    """Without the low-priority group, lock-step processes beside the background crawl (a 17 s
    test took 124 s): a test marked ``launches`` then waits for the background to end."""
    if request.node.get_closest_marker("launches") and low_priority_group() is None:
        for work in started_with_the_session.values():
            work.close()


def pytest_configure(config):
    """Garbage collection as ``ddpm-kit`` processes have it (ddpm_kit.cli.entry): every 10,000 new
    objects instead of 700, since each full collection walks torch's and diffusers' objects."""
    gc.set_threshold(10_000)


def pytest_collection_finish(session):
    """What the test modules imported lives to the end: collections skip it (gc.freeze; 2 s of the
    fast part's collections)."""
    gc.freeze()


def pytest_unconfigure(config):
    """The process ends next: its final collection skips what is alive (about 1 s)."""
    gc.freeze()


def pytest_collection_modifyitems(items):
    """The order that keeps both cores busy: the tests marked ``launches`` first (lock-step
    processes on both cores; the background work starts meanwhile), then the tests in this process
    (one core; the background work has the other), then the tests that read what the background
    work found."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("launches") else 2 if reads_background(item) else 1)


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


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the shared finished run that a test may change."""
    return Path(shutil.copytree(finished_run[0], tmp_path / "run"))


# -- third-party plugin packages, pip-built once ----------------------------------------------------
@pytest.fixture(scope="session")
def plugin_wheels(tmp_path_factory):
    """Every package of tests/plugin_packages and examples/plugins built into a wheel by one pip call;
    the groups below unpack theirs into folders of their own (install_wheels), so that the broken and
    colliding test packages are never visible to the example tests, nor the examples to them."""
    wheels = tmp_path_factory.mktemp("wheels")
    packages = sorted(p.parent for root in (TEST_PACKAGES, EXAMPLE_PACKAGES) for p in root.glob("*/pyproject.toml"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
                    str(wheels), *map(str, packages)], check=True, capture_output=True)
    return wheels


@pytest.fixture(scope="session")
def mixed_plugin_site(plugin_wheels, tmp_path_factory):
    """ddpm-kit-example beside a broken and a colliding package (tests/test_plugins.py)."""
    return install_wheels(plugin_wheels, ["ddpm-kit-example", "ddpm-kit-broken", "ddpm-kit-collide"],
                          tmp_path_factory.mktemp("test-plugins") / "site")


@pytest.fixture(scope="session")
def example_plugin_site(plugin_wheels, tmp_path_factory):
    """The five example packages of examples/plugins (tests/test_example_plugins.py)."""
    return install_wheels(plugin_wheels, sorted(p.parent.name for p in EXAMPLE_PACKAGES.glob("*/pyproject.toml")),
                          tmp_path_factory.mktemp("example-plugins") / "site")


@pytest.fixture(scope="session")
def faulty_plugin_site(plugin_wheels, tmp_path_factory):
    """ddpm-kit-faulty alone: plugins that break the contracts (samplers, metrics)."""
    return install_wheels(plugin_wheels, ["ddpm-kit-faulty"], tmp_path_factory.mktemp("faulty-plugins") / "site")


@pytest.fixture
def faulty(faulty_plugin_site, monkeypatch):
    """ddpm-kit-faulty visible to this process's entry-point scan (in-process CLI calls)."""
    monkeypatch.syspath_prepend(str(faulty_plugin_site))
    yield
    drop_modules("ddpm_kit_faulty")
