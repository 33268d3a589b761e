"""End to end: train -> sample -> evaluate from a recipe; kill and resume (several processes:
test_distributed.py; reports of finished runs: test_report.py)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import (ENV, SHORT_GRAPH, TINY, Scenarios, Started, assert_same_weights, cli, popen, set_args, wait_for,
                     weights)

pytestmark = pytest.mark.slow


def test_run_writes_the_documented_run_folder(finished_run):
    run, result = finished_run
    for rel in ("recipe.toml", "metrics.jsonl", "model/model.safetensors", "model/ema.safetensors",
                "samples/final.png", "samples/final.npz", "eval/metrics.json", "eval/bpd_terms.npy",
                "checkpoints/step_0000008/manifest.json"):
        assert (run / rel).is_file(), rel
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4, 6, 8]
    assert all(np.isfinite(m["loss"]) for m in metrics)
    images = np.load(run / "samples" / "final.npz")["images"]
    assert images.shape == (8, 1, 8, 8) and images.dtype == np.uint8
    bpd = json.loads((run / "eval" / "metrics.json").read_text())
    terms = np.load(run / "eval" / "bpd_terms.npy")
    assert terms.shape == (16, 51)  # 50 timesteps + the prior term
    assert bpd["bpd"] == pytest.approx(terms.sum(axis=1).mean(), rel=1e-6)
    assert bpd["fid"] > 0 and bpd["fid_samples"] == 8 and bpd["fid_extractor"].startswith("classifier-")
    assert "bpd:" in result.stdout and "trained 8 steps" in result.stdout
    for rel in ("eval/bpd_per_timestep.png", "eval/rate_distortion.png", "samples/final_progressive.png"):
        assert (run / rel).is_file(), rel


def test_a_run_builds_its_backbone_and_dataset_once(tmp_path, monkeypatch):
    """The pre-flight that fails bad input before the run folder is touched builds what training
    then uses: one backbone and one dataset plugin call for a whole run (it built the backbone twice)."""
    from ddpm_kit.builtins import datasets
    from ddpm_kit.engine.components import Components

    builds = {"backbone": 0, "dataset": 0}
    build_backbone, digits = Components.build_backbone, datasets.digits

    def counted_backbone(self):
        builds["backbone"] += 1
        return build_backbone(self)

    def counted_digits(**params):
        builds["dataset"] += 1
        return digits(**params)

    monkeypatch.setattr(Components, "build_backbone", counted_backbone)
    monkeypatch.setattr(datasets, "digits", counted_digits)
    result = cli("run", str(TINY), "--run-dir", str(tmp_path / "run"), "--set", "train.steps=2", "--no-sample",
                 "--no-eval")
    assert result.returncode == 0, result.stderr
    assert builds == {"backbone": 1, "dataset": 1}


def test_existing_run_folder_is_never_overwritten_silently(finished_run):
    run, _ = finished_run
    result = cli("run", str(TINY), "--run-dir", str(run))
    assert result.returncode == 2 and "already holds a run" in result.stderr


def test_sample_and_evaluate_commands_on_a_finished_run(finished_run):
    run, _ = finished_run
    result = cli("sample", str(run), "-n", "4", "--seed", "3", "--name", "again")
    assert result.returncode == 0, result.stderr
    assert np.load(run / "samples" / "again.npz")["images"].shape == (4, 1, 8, 8)
    result = cli("evaluate", str(run), "--limit", "8", "--raw")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["bpd_images"] == 8 and metrics["weights"] == "raw"


# with dropout, so that the resumed run must draw the same masks too
KILLED_ARGS = ["--set", "train.steps=40", "--set", "train.checkpoint_every=4", "--set", "backbone.dropout=0.2",
               "--no-sample", "--no-eval"]
COMPILED_ARGS = [*set_args(("train.steps=1", "train.log_every=1", *SHORT_GRAPH)), "--no-sample", "--no-eval"]


def killed_after_its_checkpoint_of_step_8(run: Path) -> float:
    """A run of KILLED_ARGS, SIGKILLed once its checkpoint of step 8 is complete; the seconds it ran."""
    started = time.time()
    proc = popen([sys.executable, "-m", "ddpm_kit", "run", str(TINY), "--run-dir", str(run), *KILLED_ARGS], env=ENV,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(run / "checkpoints" / "step_0000008" / "manifest.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return time.time() - started


def compiled_run(run: Path) -> subprocess.CompletedProcess:
    """The compiled run of test_compiled_training_equals_the_plain_run, in its own process (inductor's
    compilation, 10-60 s of CPU, fills the core the tests beside it leave idle)."""
    return Started([sys.executable, "-m", "ddpm_kit", "run", str(TINY), "--run-dir", str(run), "--set",
                    "train.compile=true", *COMPILED_ARGS], run.parent / "out.log", env=ENV).result()


def start_in_background(request) -> Scenarios:
    """The killed run and the compiled run, started with the session (conftest's ``background``)."""
    folder = request.getfixturevalue("tmp_path_factory").mktemp("background")
    return Scenarios(killed=lambda: (folder / "killed", killed_after_its_checkpoint_of_step_8(folder / "killed")),
                     compiled=lambda: (folder / "compiled", compiled_run(folder / "compiled")))


def test_killed_run_resumes_to_the_uninterrupted_weights(background, tmp_path):
    killed, seconds = background[__name__]["killed"]
    reference = tmp_path / "reference"
    assert cli("run", str(TINY), "--run-dir", str(reference), *KILLED_ARGS, threads=1).returncode == 0
    assert not (killed / "model").exists()  # it really was stopped mid-way
    before = json.loads((killed / "summary.json").read_text())["train_seconds"]  # counted up to its checkpoints
    assert 0 < before < seconds
    result = cli("run", str(TINY), "--run-dir", str(killed), "--resume", "latest", *KILLED_ARGS, threads=1)
    assert result.returncode == 0, result.stderr
    loaded = int(result.stdout.split(f"resuming {killed} from step ")[1].split()[0])
    assert loaded >= 8 and loaded % 4 == 0  # the latest checkpoint it had written, not a fresh start
    assert [m["step"] for m in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())] == \
        list(range(2, 41, 2))  # no step logged twice
    assert json.loads((killed / "summary.json").read_text())["train_seconds"] > before
    assert_same_weights(weights(reference), weights(killed))
    assert_same_weights(weights(reference, "ema"), weights(killed, "ema"))
    ref_losses = [m["loss"] for m in map(json.loads, (reference / "metrics.jsonl").read_text().splitlines())]
    got = {m["step"]: m["loss"] for m in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())}
    assert [got[s] for s in range(2, 41, 2)] == ref_losses


def test_compiled_training_equals_the_plain_run(background, tmp_path):
    """train.compile (accelerate's inductor backend) changes kernels, not results, and the saved
    weights keep the plain module's names."""
    result = cli("run", str(TINY), "--run-dir", str(tmp_path / "plain"), "--set", "train.compile=false",
                 *COMPILED_ARGS, threads=1)
    assert result.returncode == 0, result.stderr
    compiled_dir, compiled = background[__name__]["compiled"]
    assert compiled.returncode == 0, compiled.stdout[-3000:]
    runs = {"false": tmp_path / "plain", "true": compiled_dir}
    plain, compiled = (json.loads((r / "metrics.jsonl").read_text()) for r in runs.values())  # the one logged step
    paths = {k: json.loads((r / "summary.json").read_text())["train_paths"] for k, r in runs.items()}
    assert paths["false"]["compiled_graphs"] == 0 and paths["true"]["compiled_graphs"] >= 1  # dynamo compiled it
    assert compiled["loss"] == pytest.approx(plain["loss"], rel=1e-5)  # the same forward ...
    assert compiled["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-4)  # ... and backward
    a, b = weights(runs["false"]), weights(runs["true"])
    assert a.keys() == b.keys()
    # Adam's first step moves every weight by lr * sign(g); only gradients within float noise of 0 may flip
    changed = sum(int(((a[k] - b[k]).abs() > 1e-5).sum()) for k in a)
    assert changed <= 1e-3 * sum(v.numel() for v in a.values())


def test_bf16_channels_last_training_takes_those_paths_and_matches_the_plain_loss(tmp_path):
    """train.mixed_precision = "bf16" and train.channels_last: summary.json records that the first
    convolution computed in bfloat16 and channels-last (a hook saw it); the first step's loss is the float32 one to bf16's
    precision (8 bits of mantissa: 2^-8 relative per operation, 2% allowed for the whole UNet)."""
    runs = {}
    for name, extra in (("plain", []), ("fast", ["--set", 'train.mixed_precision="bf16"',
                                                 "--set", "train.channels_last=true"])):
        runs[name] = tmp_path / name
        result = cli("run", str(TINY), "--run-dir", str(runs[name]), "--set", "train.steps=1", "--set",
                          "train.log_every=1", *extra, "--no-sample", "--no-eval")
        assert result.returncode == 0, result.stderr
    paths = {k: json.loads((r / "summary.json").read_text())["train_paths"] for k, r in runs.items()}
    assert paths["plain"] == {"compiled_graphs": 0, "mixed_precision": "no", "parameter_dtype": "float32",
                              "forward_dtype": "float32", "channels_last": False}
    assert paths["fast"] == {"compiled_graphs": 0, "mixed_precision": "bf16", "parameter_dtype": "float32",
                             "forward_dtype": "bfloat16", "channels_last": True}  # float32 master weights
    plain, fast = (json.loads((r / "metrics.jsonl").read_text()) for r in runs.values())
    assert fast["loss"] == pytest.approx(plain["loss"], rel=0.02)


def test_overwrite_replaces_a_run_and_resume_refuses_a_changed_recipe(tmp_path):
    run = tmp_path / "run"
    args = ["--set", "train.steps=2", "--set", "train.log_every=1", "--no-sample", "--no-eval"]
    assert cli("run", str(TINY), "--run-dir", str(run), *args).returncode == 0
    (run / "stale.txt").write_text("from the first run")
    changed = cli("run", str(TINY), "--run-dir", str(run), *args, "--set", "train.lr=2e-3", "--resume", "latest")
    assert changed.returncode == 2 and "key 'train.lr' differs from the run's" in changed.stderr
    assert "Traceback" not in changed.stderr and (run / "stale.txt").is_file()  # nothing touched
    longer = cli("run", str(TINY), "--run-dir", str(run), "--set", "train.steps=3", "--set", "train.log_every=1",
                      "--no-sample", "--no-eval", "--resume", "latest")  # train.steps may change on resume
    assert longer.returncode == 0, longer.stderr
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    replaced = cli("run", str(TINY), "--run-dir", str(run), *args, "--set", "train.lr=2e-3", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert not (run / "stale.txt").exists()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert "lr = 0.002" in (run / "recipe.toml").read_text()


def test_export_raw_writes_the_raw_weights_and_the_default_the_ema(finished_run, tmp_path):
    from safetensors.torch import load_file

    run, _ = finished_run
    for flag, name in (([], "ema"), (["--raw"], "model")):
        out = tmp_path / name
        result = cli("export", str(run), str(out), *flag)
        assert result.returncode == 0, result.stderr
        exported = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
        ours = {k.removeprefix("unet."): v for k, v in weights(run, name).items()}
        assert exported.keys() == ours.keys()
        assert all(torch.equal(exported[k], ours[k]) for k in ours), name
    assert not all(torch.equal(a, b) for a, b in zip(weights(run, "ema").values(), weights(run).values()))


def test_gradient_accumulation_steps_on_the_mean_gradient_of_its_micro_batches(tmp_path, registry):
    """train.grad_accum = 2: one optimizer step on the mean of the two micro-batches' gradients,
    each micro-batch drawn from its own generator (seed, step, micro). Rebuilt here as a bare
    PyTorch step (same initialisation, losses / 2, clip to norm 1, one Adam step) and compared
    with the run's saved weights."""
    from accelerate.utils import set_seed

    from ddpm_kit.engine import build_components
    from ddpm_kit.engine.batches import global_batch
    from ddpm_kit.seeds import step_generator
    from ddpm_kit.recipe import load_recipe

    overrides = ["train.steps=1", "train.batch_size=8", "train.grad_accum=2", "train.log_every=1",
                 f'data.store_dir="{tmp_path / "store"}"']
    run = tmp_path / "run"
    result = cli("run", str(TINY), "--run-dir", str(run), *set_args(overrides),
                      "--no-sample", "--no-eval")
    assert result.returncode == 0, result.stderr
    recipe, _ = load_recipe(TINY, registry, overrides)
    c = build_components(recipe, registry)
    set_seed(recipe.run.seed)
    pixels = c.data.rows("train")
    model = c.build_backbone().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.train.lr)
    for micro in range(2):
        g = step_generator(recipe.run.seed, 0, micro)
        x0, _ = global_batch(pixels, 4, g, recipe.data.random_flip)
        t, w = c.objective.sample_t(c.diffusion, 4, torch.device("cpu"), g)
        noise = torch.randn(x0.shape, generator=g)
        loss = c.diffusion.training_losses(model, x0, c.objective, t=t, noise=noise, weights=w)["loss"].mean()
        (loss / 2).backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.grad_clip)
    optimizer.step()
    logged = json.loads((run / "metrics.jsonl").read_text())
    assert logged["grad_norm"] == pytest.approx(norm.item(), rel=1e-5)  # the scale Adam's first step hides
    saved, grads = weights(run), {n: p.grad for n, p in model.named_parameters()}
    assert saved.keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        # Adam's first step moves a weight by about lr * sign(g): where g is float noise around 0
        # (the attention key bias, which softmax ignores) the sign may differ; elsewhere 1e-6
        noise = grads[name].abs() < 1e-7 if name in grads else torch.zeros_like(value, dtype=torch.bool)
        torch.testing.assert_close(saved[name][~noise], value[~noise], rtol=0, atol=1e-6, msg=name)
        assert all(abs(d) <= 2.01 * recipe.train.lr for d in (saved[name][noise] - value[noise]).tolist())
    assert sum(int((g.abs() < 1e-7).sum()) for g in grads.values()) < 100  # the exemption stays small


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_the_learning_rate_decays_to_zero_after_its_warmup_as_the_formula_says(tmp_path, schedule):
    """train.lr_schedule (diffusers' get_scheduler): the lr logged after step k is the one step k + 1
    uses, lr k / W during the W warm-up steps, then lr 0.5 (1 + cos(pi p)) (cosine) or lr (1 - p)
    (linear), p = (k - W) / (N - W); written out here."""
    import math

    run = tmp_path / "run"
    lr, warmup, steps = 1e-3, 2, 8
    result = cli("run", str(TINY), "--run-dir", str(run), "--set", f"train.steps={steps}", "--set", "train.log_every=1",
                 "--set", f"train.warmup_steps={warmup}", "--set", f'train.lr_schedule="{schedule}"', "--no-sample",
                 "--no-eval")
    assert result.returncode == 0, result.stderr
    logged = [m["lr"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    decay = {"cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)), "linear": lambda p: 1 - p}[schedule]
    expected = [lr * (k / warmup if k < warmup else decay((k - warmup) / (steps - warmup))) for k in range(1, steps + 1)]
    assert logged == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert logged[-1] == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("warmup,decay", [(False, 0.995), (True, 2 / 11)])
def test_ema_warmup_starts_from_a_low_decay(tmp_path, warmup, decay):
    """diffusers' EMAModel copies the weights at the first update; train.ema_warmup then uses decay
    min(ema_decay, (1 + n) / (10 + n)) at update n + 1, so the second update has 2 / 11 instead of
    ema_decay = 0.995: EMA_2 = d W_1 + (1 - d) W_2, with W_1 from the step-1 checkpoint."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    overrides = ["train.steps=2", "train.checkpoint_every=1", "train.ema_decay=0.995",
                 f"train.ema_warmup={str(warmup).lower()}"]
    result = cli("run", str(TINY), "--run-dir", str(run), *set_args(overrides),
                 "--no-sample", "--no-eval")
    assert result.returncode == 0, result.stderr
    first = load_file(str(run / "checkpoints" / "step_0000001" / "model.safetensors"))
    trained, ema = weights(run), weights(run, "ema")
    moved = 0
    for name, value in trained.items():
        torch.testing.assert_close(ema[name], decay * first[name] + (1 - decay) * value, rtol=0, atol=1e-6, msg=name)
        moved += int((first[name] - value).abs().max() > 1e-5)
    assert moved > 10  # the second step changed the weights, so the two decays give different EMAs
