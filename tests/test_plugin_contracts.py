"""What a plugin author's mistakes now show (issue: third-party plugins cannot break a user's runs):
a sampler that raises during `run`, metrics that reuse another's figure name or return tensors,
plugin code failing in a check or a training step, and samples tied to the sampler that drew them.
The faulty plugins are a real package (tests/plugin_packages/ddpm-kit-faulty), pip-built and
unpacked into a private folder that these in-process CLI calls see on sys.path (conftest.py's
``faulty``). Samplers that break or skip the callback contract: tests/test_samplers.py."""

import json

import numpy as np
import pytest

from helpers import TINY, cli

pytestmark = pytest.mark.slow


def test_a_sampling_failure_after_training_is_finished_without_training_again(faulty, tmp_path, fresh_accelerate_state):
    run = tmp_path / "run"
    common = ["--run-dir", str(run), "--set", "train.checkpoint_every=0", "--no-eval"]
    result = cli("run", str(TINY), *common, "--set", 'sample.sampler.name="raising"')
    assert result.returncode == 1
    assert f"training finished and {run / 'model'} holds its weights" in result.stderr
    weights = (run / "model" / "ema.safetensors").read_bytes()
    result = cli("run", str(TINY), *common, "--resume", "latest")  # the recipe's own sampler now
    assert result.returncode == 0, result.stderr
    assert "training already finished at step 6" in result.stdout and "train:" not in result.stderr  # no train bar
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
