"""What a plugin author's mistakes now show (issue: third-party plugins cannot break a user's runs):
samplers that break or skip the callback contract, a sampler that raises during `run`, metrics
that reuse another's figure name or return tensors, and samples tied to the sampler that drew them.
The faulty plugins are a real package (tests/plugin_packages/ddpm-kit-faulty), pip-installed into a
private folder that these in-process CLI calls see on sys.path."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import TINY, cli

FAULTY = Path(__file__).parent / "plugin_packages" / "ddpm-kit-faulty"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def faulty_site(tmp_path_factory):
    target = tmp_path_factory.mktemp("faulty-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(FAULTY)], check=True, capture_output=True)
    return target


@pytest.fixture
def faulty(faulty_site, monkeypatch):
    monkeypatch.syspath_prepend(str(faulty_site))
    yield
    for name in [m for m in sys.modules if m.startswith("ddpm_kit_faulty")]:
        del sys.modules[name]


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return Path(shutil.copytree(finished_run[0], tmp_path / "run"))


def test_a_sampler_that_never_calls_back_still_samples(faulty, run_copy):
    result = cli("sample", str(run_copy), "-n", "4", "--sampler", "silent")
    assert result.returncode == 0, result.stderr
    assert np.load(run_copy / "samples" / "final_silent.npz")["images"].shape == (4, 1, 8, 8)  # not over final
    assert not (run_copy / "samples" / "final_silent_progressive.png").exists()
    assert "no progressive grid: the sampler reported no steps" in result.stdout


def test_a_sampler_that_reports_timesteps_is_warned_and_its_reports_counted(faulty, run_copy):
    result = cli("sample", str(run_copy), "-n", "4", "--sampler", "timesteps", "--steps", "5")
    assert result.returncode == 0, result.stderr
    assert ("warning: sampler 'timesteps' breaks the callback contract: it reported i=37 after i=49 (the i of "
            "ddpm_kit.api.Sampler counts the steps left, down to 0)") in result.stderr
    assert Image.open(run_copy / "samples" / "final_timesteps-5_progressive.png").size[0] > 0


def test_the_progressive_grid_follows_what_a_sampler_reports():
    """Kept contract: 10 columns at the evenly spaced steps of the countdown (the paper's Fig. 6);
    broken contract: the reports it made, thinned as they come (memory stays bounded), always
    ending with its last report."""
    import torch

    from ddpm_kit.engine.sampling import ProgressiveChain

    def chain(reports):
        c = ProgressiveChain(images=1)
        for n, i in enumerate(reports):
            c({"i": i, "x0_hat": torch.full((1, 1, 2, 2), -1 + 2 * n / max(len(reports) - 1, 1))})
        return c

    honest = chain(range(49, -1, -1))
    assert sorted(honest.snapshots) == [49 - round(v) for v in np.linspace(49, 0, 10)]  # report numbers
    assert honest.grid_rows().shape == (1, 10, 1, 2, 2)
    assert chain([49, 37, 24, 12, 0]).grid_rows().shape[1] == 5
    long = chain([999 - 3 * k for k in range(300)])  # 300 reports of timesteps
    assert len(long.snapshots) <= 40 and 299 in long.snapshots and long.grid_rows().shape[1] == 10
    assert long.grid_rows()[0, -1].float().mean() == 255  # the last report (x0_hat = +1) closes the row
    assert chain([]).grid_rows() is None


def test_a_sampler_that_raises_is_named_in_one_line(faulty, run_copy):
    result = cli("sample", str(run_copy), "-n", "4", "--sampler", "raising")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: sampler 'raising' (plugin 'faulty', ddpm-kit-faulty 0.1.0) failed while sampling: RuntimeError: "
        "boom in the sampler (run with --debug for the plugin's traceback)")
    from ddpm_kit.errors import PluginError

    with pytest.raises(PluginError) as raised:  # --debug: the traceback, down to the plugin's own exception
        cli("--debug", "sample", str(run_copy), "-n", "4", "--sampler", "raising")
    assert isinstance(raised.value.__cause__, RuntimeError) and str(raised.value.__cause__) == "boom in the sampler"


def test_a_sampling_failure_after_training_is_finished_without_training_again(faulty, tmp_path, fresh_accelerate_state):
    run = tmp_path / "run"
    common = ["--run-dir", str(run), "--set", "train.checkpoint_every=0", "--no-eval"]
    result = cli("run", str(TINY), *common, "--set", 'sample.sampler.name="raising"')
    assert result.returncode == 1
    assert f"training finished and {run / 'model'} holds its weights" in result.stderr
    weights = (run / "model" / "ema.safetensors").read_bytes()
    result = cli("run", str(TINY), *common, "--resume", "latest")  # the recipe's own sampler now
    assert result.returncode == 0, result.stderr
    assert "training already finished at step 6" in result.stdout and "train" not in result.stderr.split("sample")[0]
    assert (run / "model" / "ema.safetensors").read_bytes() == weights
    steps = [m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert steps == [2, 4, 6]  # logged once each
    assert np.load(run / "samples" / "final.npz")["images"].shape == (8, 1, 8, 8)


def test_metric_figures_must_have_their_own_names_and_be_numbers(faulty, run_copy):
    result = cli("evaluate", str(run_copy), "--metric", "tensorial")
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == (
        "error: metric 'tensorial' (plugin 'faulty', ddpm-kit-faulty 0.1.0) returned 'tensorial_value': Tensor; "
        "Metric.compute returns {name: number or text} (run with --debug for the plugin's traceback)")
    import torch

    from ddpm_kit.engine import EvalContext, compute_metrics, load_run_model
    from ddpm_kit.errors import PluginError
    from ddpm_kit.plugins import get_registry
    from ddpm_kit.recipe import Component
    from ddpm_kit.workflow import load_run

    components, run = load_run(get_registry(), run_copy)
    model = load_run_model(components, run, use_ema=True, device=torch.device("cpu"))
    context = EvalContext(components, model, torch.device("cpu"), run, out=run_copy / "scratch")
    (run_copy / "scratch").mkdir()
    bpd = Component(name="bpd", limit=2, batch_size=2, timesteps_per_batch=25)
    with pytest.raises(PluginError, match=r"^metric 'clash' \(plugin 'faulty'\) returned 'bpd', which metric 'bpd' "
                                          r"already reports; .*\(e\.g\. 'clash_bpd'\)$"):
        compute_metrics(context, [bpd, Component(name="clash")])
    assert compute_metrics(context, [Component(name="clash")]) == {"bpd": 1.0}  # alone, its names are its own


def test_evaluate_never_scores_another_samplers_images(run_copy):
    """The run's final.npz is reused by fid only when the recipe's sampler drew it: after `sample
    --name final` with another sampler, evaluate draws its own (and says which drew them)."""
    (run_copy / "samples" / "eval_8.npz").unlink(missing_ok=True)
    assert cli("evaluate", str(run_copy), "--metric", "fid").returncode == 0
    assert not (run_copy / "samples" / "eval_8.npz").exists()  # fid reused final.npz: the recipe's sampler drew it
    result = cli("sample", str(run_copy), "-n", "8", "--sampler", "diffusers-ddim", "--steps", "5", "--name", "final")
    assert result.returncode == 0, result.stderr
    assert json.loads(str(np.load(run_copy / "samples" / "final.npz")["drawn_by"]))["sampler"]["name"] == "diffusers-ddim"
    result = cli("evaluate", str(run_copy), "--metric", "fid")
    assert result.returncode == 0, result.stderr
    drawn = np.load(run_copy / "samples" / "eval_8.npz")
    assert json.loads(str(drawn["drawn_by"]))["sampler"]["name"] == "ancestral"


def test_plugin_code_failing_in_a_check_or_a_training_step_is_named(registry, tmp_path, fresh_accelerate_state):
    """A check= that raises a ValueError and an objective whose losses raise: each is one line that
    names the plugin (the training step names the objective and the backbone it calls)."""
    from ddpm_kit.engine import Trainer, build_components
    from ddpm_kit.errors import DdpmKitError, PluginError
    from ddpm_kit.interfaces import Objective
    from ddpm_kit.plugins import PluginInfo, Provider
    from ddpm_kit.recipe import load_recipe
    from ddpm_kit.runs import RunFolder

    class Boom(Objective):
        name = "boom"

        def losses(self, d, model, x0, t, noise):
            raise RuntimeError("boom in losses")

    def fussy(steps: int = 3):
        raise AssertionError("not built")

    def check(steps: int) -> None:
        raise ValueError(f"steps={steps} displeases me")

    info = PluginInfo("mine", "ddpm-kit-mine", "0.1")
    registry.providers["objective"]["boom"] = [Provider("objective", "boom", Boom, info)]
    registry.providers["sampler"]["fussy"] = [Provider("sampler", "fussy", fussy, info, check=check)]
    with pytest.raises(DdpmKitError, match=r"tiny\.toml: sample\.sampler: sampler 'fussy' \(plugin 'mine', "
                                           r"ddpm-kit-mine 0\.1\) failed to check its parameters: ValueError: "
                                           r"steps=3 displeases me$"):  # the default, filled in
        load_recipe(TINY, registry, ['sample.sampler.name="fussy"'])
    recipe, _ = load_recipe(TINY, registry, ['objective.name="boom"'])
    trainer = Trainer(build_components(recipe, registry, str(TINY)), RunFolder(tmp_path / "run"))
    with pytest.raises(PluginError, match=r"^objective 'boom' \(plugin 'mine', ddpm-kit-mine 0\.1\) or backbone "
                                          r"'unet2d' \(plugin 'backbones', ddpm-kit 0\.1\.0\) failed while training: "
                                          r"RuntimeError: boom in losses$"):
        trainer.fit()
