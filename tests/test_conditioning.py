"""Class-conditional models and classifier-free guidance, held against the analytic Gaussian oracle
extended to classes (ddpm_kit.testing.oracle: ClassOracle, guided_moments) and hand-written combinations."""

import math
import warnings

import numpy as np
import pytest
import torch

from ddpm_kit.testing import oracle
from helpers import TINY, make_diffusion, test_seed
from ddpm_kit.builtins.samplers import sample_ancestral
from ddpm_kit.conditioning import NULL_LABEL, class_rows, drop_labels, guided

MEANS, STDS = (-0.3, 0.1, 0.4), (0.1, 0.2, 0.15)
NULL = (0.05, 0.3)  # the label-dropped branch's Gaussian
PER_CLASS = 32  # images of 32x32 pixels per class: 32,768 pixels
N = PER_CLASS * 32 * 32


def class_samples(registry, param, variance, w, seed):
    """Ancestral samples of the three classes (one batch, classes mixed) with guidance scale w."""
    d = make_diffusion(registry, parameterization=param, variance=variance)
    model = oracle.ClassOracle(oracle.linear_betas(), MEANS, STDS, NULL, param)
    labels = torch.arange(3).repeat(PER_CLASS)  # 0, 1, 2, 0, 1, 2, ...: a class's rows are not contiguous
    x_T = torch.randn(len(labels), 1, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = sample_ancestral(d, guided(model, labels, w), x_T, generator=torch.Generator().manual_seed(seed + 1),
                         clip_denoised=False)
    return x, labels, model


@pytest.mark.slow  # about 3 s each: 1,000 steps over 96 images of 32x32
@pytest.mark.statistical
@pytest.mark.parametrize("param,variance", [("eps", "fixed_beta"), ("x0", "fixed_beta_tilde")])
def test_conditional_ancestral_sampling_hits_each_classes_closed_form_moments(registry, param, variance):
    """Each class's 32,768 pixels against its own Gaussian's closed-form ancestral moments, within
    4.5 standard errors (std / sqrt(n) for the mean, std / sqrt(2n) for the std): a correct sampler
    fails one of the six checks with probability below 1e-4 for a random seed."""
    x, labels, model = class_samples(registry, param, variance, 0.0, test_seed(31))
    assert all(set(c.tolist()) <= {0, 1, 2} for c in model.calls)  # no unconditional branch at w = 0
    for k in range(3):
        mean, std = oracle.sampled_moments(oracle.linear_betas(), variance, MEANS[k], STDS[k])
        got = x[labels == k]
        assert got.mean().item() == pytest.approx(mean, abs=4.5 * std / math.sqrt(N)), k
        assert got.std().item() == pytest.approx(std, abs=4.5 * std / math.sqrt(2 * N)), k


@pytest.mark.slow  # about 3.5 s each: 1,000 guided steps over 96 images of 32x32
@pytest.mark.statistical
@pytest.mark.parametrize("param", ["eps", "x0", "mu"])
def test_guided_sampling_hits_the_moments_of_its_chain(registry, param):
    """Guidance w = 2: every step is affine in x_t, so the samples' moments follow guided_moments'
    recursion exactly (tolerance as above). The guided moments sit far outside that tolerance from
    the unguided ones, so guidance that is ignored or mis-signed fails."""
    w = 2.0
    x, labels, model = class_samples(registry, param, "fixed_beta", w, test_seed(37))
    assert any((c == NULL_LABEL).any() for c in model.calls)  # the unconditional branch ran
    betas = oracle.linear_betas()
    for k in range(3):
        mean, std = oracle.guided_moments(betas, "fixed_beta", (MEANS[k], STDS[k]), NULL, w)
        plain_mean, plain_std = oracle.guided_moments(betas, "fixed_beta", (MEANS[k], STDS[k]), NULL, 0.0)
        tol_mean, tol_std = 4.5 * std / math.sqrt(N), 4.5 * std / math.sqrt(2 * N)
        assert abs(mean - plain_mean) > 10 * tol_mean or abs(std - plain_std) > 10 * tol_std
        got = x[labels == k]
        assert got.mean().item() == pytest.approx(mean, abs=tol_mean), k
        assert got.std().item() == pytest.approx(std, abs=tol_std), k


def test_the_two_closed_forms_agree_without_guidance():
    """guided_moments (eps affine in x_t) at w = 0 against sampled_moments (x0-hat affine in x_t):
    two derivations of the same chain."""
    for variance in ("fixed_beta", "fixed_beta_tilde"):
        for m, s in zip(MEANS, STDS):
            np.testing.assert_allclose(oracle.guided_moments(oracle.linear_betas(), variance, (m, s), NULL, 0.0),
                                       oracle.sampled_moments(oracle.linear_betas(), variance, m, s), rtol=1e-12)


class HandGuided(torch.nn.Module):
    """eps~ = (1 + w) eps*(x, y) - w eps*(x, no label), written out row by row."""

    def __init__(self, model, labels, w):
        super().__init__()
        self.model, self.labels, self.w = model, labels, w

    def forward(self, x, t):
        rows = []
        for i, y in enumerate(self.labels.tolist()):
            cond = self.model.classes[y](x[i:i + 1], t[i:i + 1])
            uncond = self.model.null(x[i:i + 1], t[i:i + 1])
            rows.append((1 + self.w) * cond - self.w * uncond)
        return torch.cat(rows)


SAMPLERS = [("ancestral", {}), ("ddim", {"steps": 10}), ("respaced", {"steps": 10}),
            ("diffusers-ddim", {"steps": 10}), ("diffusers-dpm-solver++", {"steps": 10}),
            ("diffusers-euler-ancestral", {"steps": 10}), ("diffusers-sde-dpm-solver++", {"steps": 10}),
            ("diffusers-heun", {"steps": 5})]


@pytest.mark.parametrize("name,params", SAMPLERS, ids=[s[0] for s in SAMPLERS])
def test_every_sampler_samples_a_class_with_guidance(name, params):
    """The guided model as every kind of sampler sees it (ddpm-kit's, the improved plugin's,
    diffusers' deterministic, stochastic and second-order) equals the guided eps written out by
    hand, on the same noise."""
    from ddpm_kit.plugins import get_registry

    registry = get_registry()  # with the installed plugin packages (ddim, respaced)
    d = make_diffusion(registry, variance="fixed_beta_tilde", T=100)
    model = oracle.ClassOracle(d.betas.numpy(), MEANS, STDS, NULL)
    labels = torch.tensor([2, 0, 1, 2])
    sampler = registry.build("sampler", name, params, num_timesteps=100)
    x_T = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    runs = []
    for net in (guided(model, labels, 1.5), HandGuided(model, labels, 1.5)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs.append(sampler(d, net, x_T, generator=torch.Generator().manual_seed(6)))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=1e-6)
    unguided = sampler(d, guided(model, labels, 0.0), x_T, generator=torch.Generator().manual_seed(6))
    assert (runs[0] - unguided).abs().max() > 1e-2  # the scale changed the samples


def test_learned_variance_channels_come_from_the_conditional_branch():
    class TwoHeads(torch.nn.Module):
        def forward(self, x, t, class_labels):
            mean = x + class_labels.view(-1, 1, 1, 1).double()
            var = 10 * class_labels.view(-1, 1, 1, 1).double().expand_as(x)
            return torch.cat([mean, var], 1)

    x = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    out = guided(TwoHeads(), torch.tensor([3, 5]), 2.0)(x, torch.zeros(2, dtype=torch.long))
    # mean: 3 y - 2 (-1) = 3 y + 2; variance channels: the conditional 10 y
    assert out[:, 0].flatten(1).tolist() == [[11.0] * 4, [17.0] * 4]
    assert out[:, 1].flatten(1).tolist() == [[30.0] * 4, [50.0] * 4]


@pytest.mark.statistical
def test_label_dropout_drops_its_fraction_and_keeps_the_rest():
    """100,000 labels at p = 0.1: the dropped fraction within 4.5 standard errors (0.00095 each)."""
    labels = torch.randint(0, 10, (100_000,), generator=torch.Generator().manual_seed(test_seed(3)))
    out = drop_labels(labels, 0.1, torch.Generator().manual_seed(test_seed(4)))
    dropped = out == NULL_LABEL
    assert abs(dropped.float().mean().item() - 0.1) < 4.5 * math.sqrt(0.1 * 0.9 / 100_000)
    assert torch.equal(out[~dropped], labels[~dropped])
    assert drop_labels(labels, 0.0, torch.Generator()) is labels


def test_class_rows_give_one_block_per_class():
    assert class_rows(6, [0, 1, 2]).tolist() == [0, 0, 1, 1, 2, 2]
    assert class_rows(5, [7]).tolist() == [7] * 5
    assert class_rows(4, [3, -1]).tolist() == [3, 3, -1, -1]


def test_a_bpd_batch_of_stacked_timesteps_repeats_the_labels(registry):
    """calc_bpd_loop stacks k timesteps of one batch; the bound labels repeat with them."""
    d = make_diffusion(registry, T=20)
    model = oracle.ClassOracle(d.betas.numpy(), MEANS, STDS, NULL)
    x0 = torch.full((3, 1, 2, 2), 0.1, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1])
    one = d.calc_bpd_loop(guided(model, labels), x0, generator=torch.Generator().manual_seed(0))["total_bpd"]
    stacked = d.calc_bpd_loop(guided(model, labels), x0, generator=torch.Generator().manual_seed(0),
                              timesteps_per_batch=7)["total_bpd"]
    torch.testing.assert_close(one, stacked)
    assert all(torch.equal(c, labels.repeat(len(c) // 3)) for c in model.calls)
    per_class = [d.calc_bpd_loop(guided(model, torch.tensor([k])), x0[:1], generator=torch.Generator().manual_seed(0))
                 ["total_bpd"] for k in range(3)]
    assert len({round(float(p), 6) for p in per_class}) == 3  # each label gives its own likelihood


# -- through the engine --------------------------------------------------------------------------
CONDITIONAL = """
[conditioning]
num_classes = 10
label_dropout = 0.25
"""


@pytest.mark.slow
def test_a_conditional_run_trains_on_its_labels_and_samples_and_scores_each_class(tmp_path, monkeypatch,
                                                                                    fresh_accelerate_state):
    """The tiny recipe made conditional, in this process, with the backbone's calls recorded: the
    training steps see the drawn rows' dataset labels (a quarter dropped), bits/dim sees the test
    labels, sampling sees one block per class plus the label-dropped branch (guidance), and the
    metrics score each class."""
    from ddpm_kit.builtins.backbones import UNetBackbone
    from ddpm_kit.cli import main
    from ddpm_kit.engine import build_components
    from ddpm_kit.engine.batches import draw_indices
    from ddpm_kit.seeds import step_generator
    from ddpm_kit.plugins import get_registry
    from ddpm_kit.recipe import load_recipe

    calls = []
    forward = UNetBackbone.forward

    def recording(self, x, t, class_labels=None):
        calls.append(None if class_labels is None else class_labels.clone())
        return forward(self, x, t, class_labels)

    monkeypatch.setattr(UNetBackbone, "forward", recording)
    recipe = tmp_path / "c.toml"
    recipe.write_text(TINY.read_text() + CONDITIONAL)
    run = tmp_path / "run"
    metrics = '[{name = "bpd", limit = 16, batch_size = 16, timesteps_per_batch = 50}, {name = "fid", num_samples = 20}]'
    main(["run", str(recipe), "--run-dir", str(run), "--set", "train.steps=40", "--set", "train.batch_size=16",
          "--set", "sample.num_images=20", "--set", "sample.batch_size=20", "--set", "sample.guidance_scale=1.0",
          "--set", f"eval.metrics={metrics}"])
    assert all(c is not None for c in calls)
    train_calls, rest = calls[:40], calls[40:]
    parsed, _ = load_recipe(recipe, get_registry(), ["train.steps=40", "train.batch_size=16"])
    components = build_components(parsed, get_registry())
    labels = components.data.labels("train")
    dropped = 0
    for step, seen in enumerate(train_calls):
        drawn = labels[draw_indices(len(labels), 16, step_generator(0, step, 0))]
        kept = seen != NULL_LABEL
        assert torch.equal(seen[kept], drawn[kept]), step
        dropped += int((~kept).sum())
    # 640 labels at p = 0.25: standard error 0.017; 4.5 of them
    assert abs(dropped / 640 - 0.25) < 4.5 * math.sqrt(0.25 * 0.75 / 640)
    sampling = [c for c in rest if len(c) == 40]  # 20 images, both branches of guidance in one call
    assert len(sampling) == 50 and all(torch.equal(c, torch.cat([class_rows(20, list(range(10))),
                                                                  torch.full((20,), -1)])) for c in sampling)
    test_labels = components.data.labels("test")[:16]
    assert any(len(c) == 16 * 50 and torch.equal(c, test_labels.repeat(50)) for c in rest)  # bits/dim
    stored = np.load(run / "samples" / "final.npz")
    assert stored["labels"].tolist() == class_rows(20, list(range(10))).tolist()
    import json

    result = json.loads((run / "eval" / "metrics.json").read_text())
    assert {f"class_accuracy_{k}" for k in range(10)} <= set(result)
    per_class = [result[f"class_accuracy_{k}"] for k in range(10)]
    assert result["class_accuracy"] == pytest.approx(sum(per_class) / 10)  # two samples per class
    assert all(v in (0.0, 0.5, 1.0) for v in per_class)
    from PIL import Image

    assert Image.open(run / "samples" / "final.png").size[0] < Image.open(run / "samples" / "final.png").size[1]
    # one metric at another guidance scale: w = 0 runs no label-dropped branch, and is filed apart
    calls.clear()
    from helpers import cli

    result = cli("evaluate", run, "--metric", "fid", "--num-samples", "10", "--guidance-scale", "0")
    assert result.returncode == 0, result.stderr
    assert calls and all(torch.equal(c, class_rows(10, list(range(10)))) for c in calls)
    assert "class_accuracy" in json.loads((run / "eval" / "fid_w0.json").read_text())
    assert (run / "samples" / "eval_10_w0.npz").is_file()


def test_class_accuracy_counts_each_class_and_skips_unlabelled_samples():
    from ddpm_kit.builtins.metrics import class_accuracy

    predicted = np.array([0, 0, 1, 2, 2, 2, 1])
    labels = torch.tensor([0, 1, 1, 2, 2, -1, -1])
    out = class_accuracy({"predicted": predicted}, labels)
    assert out == {"class_accuracy": 0.8, "class_accuracy_0": 1.0, "class_accuracy_1": 0.5, "class_accuracy_2": 1.0}
    assert class_accuracy({"predicted": predicted}, None) == {}


def test_a_backbone_written_for_model_x_t_keeps_working_and_is_refused_only_for_classes(tmp_path):
    """A third-party backbone factory with no num_classes (and **kwargs) is never passed one in an
    unconditional run; a conditional recipe naming it is a one-line error that names it."""
    from ddpm_kit.engine import build_components
    from ddpm_kit.errors import DdpmKitError
    from ddpm_kit.plugins import PluginInfo, Provider, get_registry
    from ddpm_kit.recipe import load_recipe

    seen = {}

    def plain(in_channels: int, out_channels: int, image_size: int, **kwargs):
        seen.update(kwargs)
        return torch.nn.Conv2d(in_channels, out_channels, 1)

    registry = get_registry(entry_points=False)
    registry.providers["backbone"]["plain"] = [Provider("backbone", "plain", plain, PluginInfo("plain", "plain", "0"))]
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY.read_text().replace('name = "unet2d"\npreset = "cpu-tiny"', 'name = "plain"'))
    net = build_components(load_recipe(recipe, registry)[0], registry).build_backbone()
    assert isinstance(net, torch.nn.Conv2d) and seen == {}
    recipe.write_text(recipe.read_text() + CONDITIONAL)
    with pytest.raises(DdpmKitError, match="backbone 'plain' takes no class labels"):
        build_components(load_recipe(recipe, registry)[0], registry).build_backbone()
