"""Several processes as one: every image and every bits/dim figure a function of (seed, index),
training, sampling and evaluation on 2 CPU processes (torchrun, the documented command) equal
to one process. Every multi-process test first asserts that it saw 2 processes; the one-process
runs they are held against run in this process (helpers.cli, one thread as the launched ones)."""

import json
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddpm_kit.testing import oracle
from helpers import ENV, TINY, assert_same_weights, cli, make_diffusion, weights
from ddpm_kit.engine import build_components, sample_images
from ddpm_kit.engine.dropout import GlobalBatchDropout, use_global_batch_dropout
from ddpm_kit.noise import ImageNoise
from ddpm_kit.recipe import load_recipe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, processes=2):
    """The documented multi-process command: torchrun --nproc_per_node P -m ddpm_kit ..."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "ddpm_kit", *args]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)


def processes_seen(run, stage):
    return json.loads((run / "summary.json").read_text())[f"{stage}_processes"]


def assert_two_processes(run, stage):
    seen = processes_seen(run, stage)
    assert seen["num_processes"] == 2 and seen["distributed_type"] == "MULTI_CPU", seen
    assert seen["launcher"] == "torchrun"


# -- per-image randomness (in process) -----------------------------------------------------------
@pytest.mark.slow  # about 2.5 s: 80 images through 50 UNet steps
def test_images_do_not_depend_on_the_batch_size(registry):
    recipe, _ = load_recipe(TINY, registry, ["sample.sampler.name=ancestral"])
    components = build_components(recipe, registry)
    torch.manual_seed(0)
    model = components.build_backbone()
    outs = {}
    for batch_size in (7, 3, 20):
        components.recipe.sample.batch_size = batch_size
        outs[batch_size] = sample_images(components, model, 20, torch.device("cpu"), seed=4)
    assert outs[7].shape == (20, 1, 8, 8)
    assert torch.equal(outs[7], outs[3]) and torch.equal(outs[7], outs[20])
    other_seed = sample_images(components, model, 20, torch.device("cpu"), seed=5)
    assert (other_seed != outs[20]).float().mean() > 0.5  # the noise really is the seed's


def test_bits_per_dim_of_an_image_do_not_depend_on_its_batch(registry):
    d = make_diffusion(registry, T=100)
    model = oracle.EpsOracle(d.betas.numpy())
    x = oracle.quantize(oracle.M + oracle.S * torch.randn(6, 1, 4, 4, dtype=torch.float64,
                                                          generator=torch.Generator().manual_seed(0)))
    whole = d.calc_bpd_loop(model, x, noise=ImageNoise(3, range(6)), timesteps_per_batch=7)
    parts = [d.calc_bpd_loop(model, x[a:b], noise=ImageNoise(3, range(a, b))) for a, b in ((0, 2), (2, 6))]
    for key in ("vb", "prior_bpd", "xstart_mse"):
        torch.testing.assert_close(torch.cat([p[key] for p in parts]), whole[key], rtol=1e-12, atol=1e-12)
    reordered = d.calc_bpd_loop(model, x.flip(0), noise=ImageNoise(3, range(5, -1, -1)))
    torch.testing.assert_close(reordered["vb"].flip(0), whole["vb"], rtol=1e-12, atol=1e-12)


def test_global_batch_dropout_gives_each_row_its_own_mask_whatever_the_slice():
    net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Dropout(0.5))
    source = use_global_batch_dropout(net)
    assert isinstance(net[1], GlobalBatchDropout)
    x = torch.ones(8, 4)
    source.start(seed=11, global_rows=8, rows=slice(None))
    whole = net(x)
    halves = []
    for rows in (slice(0, 4), slice(4, 8)):
        source.start(seed=11, global_rows=8, rows=rows)
        halves.append(net(x[rows]))
    torch.testing.assert_close(torch.cat(halves), whole, rtol=0, atol=0)
    dropped = (whole == 0).float().mean().item()
    assert 0.5 - 4 * 0.0221 < dropped < 0.5 + 4 * 0.0221  # 512 Bernoulli(0.5): standard error 0.022
    net.eval()
    torch.testing.assert_close(net(x), net[0](x))


# -- two processes (torchrun) --------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.launches
def test_two_processes_with_half_batches_train_like_one_process_with_dropout(tmp_path):
    args = ["--set", "train.steps=3", "--set", "train.batch_size=8", "--set", "backbone.dropout=0.3",
            "--no-sample", "--no-eval"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli("run", str(TINY), "--run-dir", str(one), *args, threads=1).returncode == 0  # in this process
    result = torchrun("run", str(TINY), "--run-dir", str(two), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_two_processes(two, "train")
    assert processes_seen(one, "train")["num_processes"] == 1
    assert_same_weights(weights(one), weights(two), atol=1e-5)
    # the dropout really acted: without it the same steps give other weights
    plain = tmp_path / "plain"
    assert cli("run", str(TINY), "--run-dir", str(plain), *args, "--set", "backbone.dropout=0.0").returncode == 0
    assert max((weights(one)[k] - weights(plain)[k]).abs().max().item() for k in weights(one)) > 1e-3


@pytest.mark.slow
@pytest.mark.launches
def test_a_conditional_run_on_two_processes_trains_and_samples_like_one_process(tmp_path):
    """Labels are sliced per process like the images and label dropout is drawn on the global batch,
    so 2 processes with half batches train the same weights as 1 and draw the same guided samples."""
    recipe = tmp_path / "c.toml"
    recipe.write_text(TINY.read_text().replace("num_images = 8\nbatch_size = 8",
                                               "num_images = 10\nbatch_size = 6\nguidance_scale = 1.0")
                      + "\n[conditioning]\nnum_classes = 10\nlabel_dropout = 0.3\n")
    args = ["--set", "train.steps=3", "--set", "train.batch_size=8", "--no-eval"]
    one, two = tmp_path / "one", tmp_path / "two"
    result = cli("run", str(recipe), "--run-dir", str(one), *args, threads=1)  # in this process
    assert result.returncode == 0, result.stderr
    result = torchrun("run", str(recipe), "--run-dir", str(two), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_two_processes(two, "train")
    assert_two_processes(two, "sample")
    assert processes_seen(one, "train")["num_processes"] == 1
    assert_same_weights(weights(one), weights(two), atol=1e-5)
    a, b = (np.load(r / "samples" / "final.npz") for r in (one, two))
    assert a["labels"].tolist() == b["labels"].tolist() == list(range(10))
    # the weights agree to 1e-5, so the 8-bit images to the rounding of a pixel at most
    assert np.abs(a["images"].astype(int) - b["images"].astype(int)).max() <= 1


@pytest.mark.slow
@pytest.mark.launches
def test_sample_and_evaluate_on_two_processes_write_what_one_process_writes(tmp_path):
    run = tmp_path / "run"
    # bpd_ode (ddpm-kit-likelihood): an adaptive solver inside each process, no collective inside it
    metrics = ('[{name = "bpd", limit = 12, batch_size = 4, timesteps_per_batch = 5}, {name = "fid", num_samples = 20}, '
               '{name = "bpd_ode", limit = 6, batch_size = 2, rtol = 1e-3, atol = 1e-3}]')
    result = cli("run", str(TINY), "--run-dir", str(run), "--set", "train.steps=4", "--set",
                 f"eval.metrics={metrics}", "--set", "sample.batch_size=8", "--no-sample", "--no-eval")
    assert result.returncode == 0, result.stderr

    assert cli("sample", str(run), "-n", "24", "--name", "one", threads=1).returncode == 0
    result = torchrun("sample", str(run), "-n", "24", "--name", "two")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_two_processes(run, "sample")
    one, two = (np.load(run / "samples" / f"{n}.npz")["images"] for n in ("one", "two"))
    assert one.shape == (24, 1, 8, 8) and one.tobytes() == two.tobytes()
    assert len(np.unique(one.reshape(24, -1), axis=0)) == 24  # 24 different images, not one repeated

    assert cli("evaluate", str(run), threads=1).returncode == 0
    first = {p.name: np.load(p) for p in (run / "eval").glob("*.npy")}
    first_metrics = json.loads((run / "eval" / "metrics.json").read_text())
    shutil.rmtree(run / "eval")
    (run / "samples" / "eval_20.npz").unlink()  # the FID samples are drawn again, by 2 processes
    result = torchrun("evaluate", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_two_processes(run, "eval")
    assert first["bpd_terms.npy"].shape == (12, 51) and first["bpd_ode.npy"].shape == (6, 2)
    for name, array in first.items():
        assert np.array_equal(np.load(run / "eval" / name), array), name
    assert json.loads((run / "eval" / "metrics.json").read_text()) == first_metrics


@pytest.mark.slow
def test_encoded_data_decoded_in_loader_workers_trains_like_the_store(tmp_path):
    args = ["--set", "train.steps=4", "--set", "train.batch_size=8", "--set", "train.grad_accum=2",
            "--set", "data.random_flip=true", "--no-sample", "--no-eval"]
    stored, encoded = tmp_path / "stored", tmp_path / "encoded"
    assert cli("run", str(TINY), "--run-dir", str(stored), *args).returncode == 0
    result = cli("run", str(TINY), "--run-dir", str(encoded), *args, "--set", "data.store=\"encoded\"",
                      "--set", "data.workers=2", "--set", f"data.store_dir=\"{tmp_path / 'store'}\"")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "store").exists()  # nothing was decoded to disk: the batches came from the workers
    assert_same_weights(weights(stored), weights(encoded))


@pytest.mark.slow
@pytest.mark.launches
def test_gamma_of_the_analytic_plugin_on_two_processes_equals_one_process(tmp_path):
    """ddpm-kit-analytic's Gamma: the timesteps shared by the processes of a launch, timestep t's
    noise from its own generator: the file of 2 processes equals that of 1, value for value.
    (ddpm-kit-likelihood's bpd_ode is in the two-process evaluation above.)"""
    run = tmp_path / "run"
    assert cli("run", str(TINY), "--run-dir", str(run), "--set", "train.steps=4", "--no-sample", "--no-eval").returncode == 0
    gamma_file = run / "analytic" / "gamma.json"
    assert cli("analytic-gamma", str(run), "--images", "16", threads=1).returncode == 0
    one = json.loads(gamma_file.read_text())
    result = torchrun("analytic-gamma", str(run), "--images", "16")
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads(gamma_file.read_text())
    assert one.pop("processes") == 1 and two.pop("processes") == 2
    assert one == two and len(one["gamma"]) == 50
