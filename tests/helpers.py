"""Helpers shared by the tests (fixtures live in conftest.py)."""

import functools
import os
import subprocess
import sys
from pathlib import Path

TINY = Path(__file__).parent / "recipes" / "tiny.toml"
SEED_VARIABLE = "DDPM_KIT_TEST_SEED"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def make_diffusion(registry, schedule="linear", parameterization="eps", variance="fixed_beta",
                   decoder="discretized_gaussian", T=1000, **decoder_params):
    from ddpm_kit.diffusion import GaussianDiffusion

    return GaussianDiffusion(
        registry.build("schedule", schedule, {"T": T}),
        registry.build("parameterization", parameterization),
        registry.build("variance", variance),
        registry.build("decoder", decoder, decoder_params),
    )


@functools.lru_cache(maxsize=None)
def ancestral_samples(param, variance, seed):
    """64 images of 32x32 pixels by ancestral sampling (float64, no clipping) from the analytic
    Gaussian oracle of tests/oracle.py, x_T from ``seed`` and the chain's noise from ``seed + 1``.
    The draw is a function of its arguments alone, so the tests that ask for the same one share it
    (about 1.5 s each, most of it drawing the noise)."""
    import oracle
    from ddpm_kit.builtins.samplers import sample_ancestral
    from ddpm_kit.plugins import get_registry

    import torch

    d = make_diffusion(get_registry(entry_points=False), parameterization=param, variance=variance)
    model = oracle.EpsOracle(oracle.linear_betas(), param)
    x_T = torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return sample_ancestral(d, model, x_T, generator=torch.Generator().manual_seed(seed + 1), clip_denoised=False)


def ddpm_kit(*args, site=None, **kw):
    """Run the CLI in a subprocess, as a user would; ``site``, a folder of installed packages
    (install_wheels), goes on its PYTHONPATH."""
    env = ENV
    if site is not None:
        env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), ENV.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "ddpm_kit", *args], capture_output=True, text=True, env=env, **kw)


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


def cli(*args, threads=None):
    """Run the CLI in this process, as ``ddpm_kit`` does in a subprocess but without starting an
    interpreter and importing torch and diffusers again (about 4 s a call); exit status, stdout and
    stderr come back alike. Accelerate's shared state is reset afterwards, and plugins' commands are
    removed from the command group (a later call adds the installed ones again). Tests of processes,
    signals and the installed entry point keep ``ddpm_kit``. ``threads=1`` computes as the
    subprocesses do (``OMP_NUM_THREADS=1``), for results compared bit for bit with theirs."""
    import contextlib
    import io

    import torch
    from accelerate.state import AcceleratorState

    from ddpm_kit.cli import cli as group, main

    out, err, code = io.StringIO(), io.StringIO(), 0
    before, commands = torch.get_num_threads(), dict(group.commands)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            torch.set_num_threads(threads or before)
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        finally:
            torch.set_num_threads(before)
            AcceleratorState._reset_state(reset_partial_state=True)
            group.commands.clear()  # the commands plugins added in this call (each call adds them again)
            group.commands.update(commands)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


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


def test_seed(offset: int = 0) -> int:
    """A seed for a statistical test: ``offset`` plus 10,007 x $DDPM_KIT_TEST_SEED (default 0).
    Statistical tests pass for any value (scripts/seed_sweep.py runs them over 20)."""
    return offset + 10_007 * int(os.environ.get(SEED_VARIABLE, "0"))


test_seed.__test__ = False  # a helper, not a test
