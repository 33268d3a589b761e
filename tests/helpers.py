"""Helpers shared by the tests (fixtures live in conftest.py)."""

import contextlib
import functools
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from ddpm_kit.testing import TINY, ancestral_samples, cli, diffusion, statistical_seed  # noqa: F401 (the tests' names)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


# A one-level UNet without attention: inductor compiles 35 C++ kernels for its training step instead of
# 54 for the tiny recipe's two levels (on a cold cache, this 2-core machine: 51 s instead of 68 s).
SHORT_GRAPH = ("backbone.add_attention=false", "backbone.block_out_channels=[16]",
               'backbone.down_block_types=["DownBlock2D"]', 'backbone.up_block_types=["UpBlock2D"]')


def set_args(overrides) -> list[str]:
    """``--set KEY=VALUE`` for each override, as the command line takes them."""
    return [a for o in overrides for a in ("--set", o)]


def make_diffusion(registry, *args, **kwargs):
    """ddpm_kit.testing.diffusion on ``registry``."""
    return diffusion(registry, *args, **kwargs)


def ddpm_kit(*args, site=None, **kw):
    """Run the CLI in a subprocess, as a user would; ``site``, a folder of installed packages
    (install_wheels), goes on its PYTHONPATH."""
    env = ENV
    if site is not None:
        env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), ENV.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "ddpm_kit", *args], capture_output=True, text=True, env=env, **kw)


BACKGROUND = Path("/sys/fs/cgroup/cpu/ddpm-kit-test-background")


@functools.cache
def low_priority_group() -> Path | None:
    """The background's cpu cgroup (v1), of weight 102 of 1024: its processes get a tenth of the
    CPU beside a test, so that work started with the session fills the core a test leaves idle
    without slowing it. Niceness cannot do it: with the kernel's autogroups (on by default), nice
    orders processes only within a session, and SLURM starts each job and job step in a session
    of its own. None where the group cannot be made (no root, cgroup v2 only)."""
    try:
        BACKGROUND.mkdir(exist_ok=True)
        (BACKGROUND / "cpu.shares").write_text("102\n")
    except OSError:
        return None
    return BACKGROUND


def in_the_background(pid: int) -> None:
    """Process ``pid`` and the processes it starts from now on into ``low_priority_group()``; where
    there is none, the background shares the CPUs alike with the tests (conftest's ``launches_alone``)."""
    if (group := low_priority_group()) is not None:
        with contextlib.suppress(OSError):  # it has ended already
            (group / "cgroup.procs").write_text(f"{pid}\n")


def leave_the_background() -> None:
    """Remove the background's cgroup (the kernel refuses while a process is in it)."""
    with contextlib.suppress(OSError):
        BACKGROUND.rmdir()


def wait_for(path: Path, process: subprocess.Popen | None = None, timeout: float = 300) -> None:
    """Return once ``path`` exists; fail if ``process`` ends first or ``timeout`` seconds pass."""
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"no {path} after {timeout} s"
        assert process is None or process.poll() is None, f"{process.args[:6]} ended before {path} appeared"
        time.sleep(0.005)


def popen(args: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen(args, **kwargs)``, the process moved into the background (in_the_background)."""
    process = subprocess.Popen(args, **kwargs)
    in_the_background(process.pid)
    return process


class Started:
    """A command started in the background (in_the_background) when the session starts, its
    stdout and stderr to the file ``log``; ``result()`` waits for it (conftest's ``background``)."""

    def __init__(self, args: list[str], log: Path, **kwargs) -> None:
        self.log = log
        with log.open("w") as out:
            self.process = popen(args, stdout=out, stderr=subprocess.STDOUT, text=True, **kwargs)

    def option(self, flag: str) -> str:
        """The value the command was given for ``flag`` (its ``--run-dir``, say)."""
        return self.process.args[self.process.args.index(flag) + 1]

    def result(self) -> subprocess.CompletedProcess:
        """The exit status; stdout holds stdout and stderr together."""
        self.process.wait()
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, self.log.read_text(), "")

    def close(self) -> None:
        self.process.wait()


class Scenarios:
    """Scenarios started with the session (conftest's ``background``), each in a thread of its own
    that starts its processes with ``popen``: ``scenarios[name]`` waits for one and returns what it
    returned (or raises what it raised)."""

    def __init__(self, **scenarios: Callable[[], Any]) -> None:
        self._pool = ThreadPoolExecutor(len(scenarios))
        self._outcomes = {name: self._pool.submit(scenario) for name, scenario in scenarios.items()}

    def __getitem__(self, name: str) -> Any:
        return self._outcomes[name].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def install_wheels(wheels, distributions, target):
    """Unpack the wheels of ``distributions`` (e.g. "ddpm-kit-example") from the folder ``wheels``
    into the fresh folder ``target``, as ``pip install --target`` lays them out (a wheel is a zip
    of the package and its .dist-info, entry points included); ``target`` is returned."""
    import zipfile

    target = Path(target)
    target.mkdir(parents=True, exist_ok=False)
    for name in distributions:
        (wheel,) = Path(wheels).glob(f"{name.replace('-', '_')}-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    return target


def drop_modules(*prefixes):
    """Forget the imported modules of plugin packages whose folder leaves sys.path (so a later
    registry does not find them imported)."""
    for name in [m for m in sys.modules if m.startswith(prefixes)]:
        del sys.modules[name]


def weights(run, name="model"):
    """A run's final weights (model/<name>.safetensors) as a state dict."""
    from safetensors.torch import load_file

    return load_file(str(Path(run) / "model" / f"{name}.safetensors"))


def assert_same_weights(a, b, atol=0.0):
    import torch

    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def tiny_with(tmp_path, old, new, name="r.toml"):
    """The tiny recipe with ``old`` replaced by ``new`` (or each pair of two tuples), written to tmp_path."""
    text = TINY.read_text()
    for o, n in zip(old, new) if isinstance(old, tuple) else [(old, new)]:
        assert o in text
        text = text.replace(o, n)
    path = tmp_path / name
    path.write_text(text)
    return path


test_seed = statistical_seed
test_seed.__test__ = False  # a helper, not a test
