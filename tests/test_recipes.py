"""Recipes: validation errors are one line naming file, key and fix; overrides; extends."""

from pathlib import Path

import pytest

from ddpm_kit.cli import main
from ddpm_kit.recipe import load_recipe

from helpers import TINY, cli, tiny_with


def write(tmp_path, text, name="r.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def run_cli(*args):
    """The CLI in this process (helpers.cli): its exit status and stderr."""
    result = cli(*args)
    return result.returncode, result.stderr


BROKEN = [
    # (description, old, new, expected fragment of the error)
    ("bad TOML", "steps = 6", "steps = = 6", "not valid TOML"),
    ("missing section", "[train]\nsteps = 6\nbatch_size = 8\n", "[train_]\nsteps = 6\nbatch_size = 8\n",
     "unknown key 'train_' (did you mean 'train'?)"),
    ("unknown key", "steps = 6", "stpes = 6", "unknown key 'train.stpes' (did you mean 'steps'?)"),
    ("wrong type", "steps = 6", 'steps = "six"', "train.steps: Input should be a valid integer"),
    ("out of range", "batch_size = 8", "batch_size = 0", "train.batch_size: Input should be greater than 0"),
    ("negative steps", "steps = 6", "steps = -3", "train.steps: Input should be greater than or equal to 0"),
    ("unknown plugin", 'variance = { name = "fixed_beta" }', 'variance = { name = "fixed_betta" }',
     "diffusion.variance.name: unknown variance 'fixed_betta' (did you mean 'fixed_beta'?); valid: fixed_beta"),
    ("unknown plugin parameter", 'name = "linear", T = 50', 'name = "linear", T = 50, beta_strat = 0.1',
     "diffusion.schedule.beta_strat: schedule 'linear' has no parameter 'beta_strat' (did you mean 'beta_start'?)"),
    ("bad plugin parameter type", 'name = "linear", T = 50', 'name = "linear", T = "fifty"',
     "diffusion.schedule.T: schedule 'linear' parameter 'T': Input should be a valid integer"),
    ("learned variance with L_simple", 'variance = { name = "fixed_beta" }', 'variance = { name = "learned" }',
     "objective 'simple' cannot train variance 'learned'"),
    ("backbone forced to C channels with learned variance",
     ('preset = "cpu-tiny"', 'name = "simple"', 'name = "fixed_beta"'),
     ('preset = "cpu-tiny"\nout_channels = 1', 'name = "vlb"', 'name = "learned"'),
     "backbone.out_channels: backbone 'unet2d': 'out_channels' is supplied by the engine, never by a recipe; remove it"),
    ("image size the UNet cannot downsample", "image_size = 8", "image_size = 9",
     "image_size 9 cannot be halved 1 times"),
    ("unknown channels", "channels = 1", "channels = 2", "data.channels: Input should be 1 or 3"),
    ("missing data folder", 'dataset = { name = "digits" }', 'dataset = { name = "imagefolder", path = "/nonexistent/x" }',
     "data folder '/nonexistent/x' does not exist"),
    ("unknown preset", 'preset = "cpu-tiny"', 'preset = "cpu-tinny"', "unknown unet2d preset 'cpu-tinny'"),
    ("unknown mixed precision", "lr = 1e-3", 'lr = 1e-3\nmixed_precision = "fp8"',
     "train.mixed_precision: Input should be 'no', 'bf16' or 'fp16'"),
    ("negative learning rate", "lr = 1e-3", "lr = -1e-3", "train.lr: Input should be greater than 0"),
    ("EMA decay out of range", "lr = 1e-3", "lr = 1e-3\nema_decay = 1.5", "train.ema_decay: Input should be less than 1"),
    ("batch not divisible by grad_accum", "lr = 1e-3", "lr = 1e-3\ngrad_accum = 3",
     "batch_size 8 must be divisible by grad_accum 3"),
    ("unknown section", "[sample]", "[sampel]", "unknown key 'sampel' (did you mean 'sample'?)"),
    ("string instead of a table", ('[backbone]\nname = "unet2d"\npreset = "cpu-tiny"\n', "[run]"),
     ("", 'backbone = "unet2d"\n[run]'), "backbone: Input should be a valid dictionary or instance of Component"),
    ("unknown objective", 'name = "simple"', 'name = "simpel"', "objective.name: unknown objective 'simpel' (did you mean 'simple'?)"),
    ("unknown backbone", 'name = "unet2d"', 'name = "unet3d"', "backbone.name: unknown backbone 'unet3d' (did you mean 'unet2d'?)"),
    ("unknown metric", 'name = "bpd"', 'name = "bdp"', "eval.metrics[0].name: unknown metric 'bdp' (did you mean 'bpd'?)"),
    ("unknown resize mode", "channels = 1", 'channels = 1\nresize = "stretch"', "data.resize: Input should be 'resize', 'pad' or 'center_crop'"),
    ("decoder parameter a factory rejects", 'variance = { name = "fixed_beta" }',
     'variance = { name = "fixed_beta" }\ndecoder = { name = "discretized_gaussian", bits = 0 }',
     "diffusion.decoder: decoder 'discretized_gaussian' (plugin 'decoders', ddpm-kit 0.1.0) failed to build: "
     "ValueError: bits must lie in 1..16"),
    ("dataset parameter of the wrong type", 'dataset = { name = "digits" }', 'dataset = { name = "digits", test_fraction = "a tenth" }',
     "data.dataset.test_fraction: dataset 'digits' parameter 'test_fraction': Input should be a valid number"),
    ("zero sample images", "num_images = 8", "num_images = 0", "sample.num_images: Input should be greater than 0"),
    ("extends a missing base", "[run]", 'extends = "no_such_base.toml"\n[run]', "no_such_base.toml: recipe file not found"),
    ("unknown backbone key", 'preset = "cpu-tiny"', 'preset = "cpu-tiny"\nbogus_key_xyz = 1',
     "backbone.bogus_key_xyz: backbone 'unet2d' has no parameter 'bogus_key_xyz'; valid: act_fn, add_attention,"),
    ("misspelt UNet2DModel argument", 'preset = "cpu-tiny"', 'preset = "cpu-tiny"\nlayers_per_blok = 2',
     "backbone 'unet2d' has no parameter 'layers_per_blok' (did you mean 'layers_per_block'?)"),
    ("configuration UNet2DModel rejects", 'preset = "cpu-tiny"', 'preset = "cpu-tiny"\nblock_out_channels = [16]',
     "backbone: backbone 'unet2d': UNet2DModel rejected the configuration: Must provide the same number of `block_out_channels`"),
    ("an engine-supplied sampler argument", "[sample]", '[sample]\nsampler = { name = "ancestral", num_timesteps = 5 }',
     "sample.sampler.num_timesteps: sampler 'ancestral': 'num_timesteps' is supplied by the engine, never by a "
     "recipe; remove it"),
    ("sampler that cannot sample the run", ("[sample]", 'name = "simple"', 'name = "fixed_beta"'),
     ('[sample]\nsampler = { name = "diffusers-unipc", steps = 10 }', 'name = "vlb"', 'name = "learned"'),
     "sample.sampler: sampler 'diffusers-unipc' cannot use the learned variance 'learned'"),
    # class-conditional runs (docs/conditioning.md)
    ("guidance in an unconditional run", "num_images = 8", "num_images = 8\nguidance_scale = 2.0",
     "recipe: sample.classes and sample.guidance_scale need a [conditioning] section"),
    ("a class beyond num_classes", "[sample]", "[conditioning]\nnum_classes = 10\n[sample]\nclasses = [3, 10]",
     "recipe: sample.classes [10] out of range: classes are 0..9, -1 for no label"),
    ("guidance without label dropout", "[sample]",
     "[conditioning]\nnum_classes = 10\nlabel_dropout = 0.0\n[sample]\nguidance_scale = 1.0",
     "need the unconditional branch: set conditioning.label_dropout > 0"),
    ("one class", "[sample]", "[conditioning]\nnum_classes = 1\n[sample]",
     "conditioning.num_classes: Input should be greater than 1"),
    ("label dropout of 1", "[sample]", "[conditioning]\nnum_classes = 10\nlabel_dropout = 1.0\n[sample]",
     "conditioning.label_dropout: Input should be less than 1"),
    ("a label column the dataset lacks", "[sample]", '[conditioning]\nnum_classes = 10\nlabel = "digit"\n[sample]',
     "conditioning.label: dataset 'digits' has no column 'digit'; columns: image, label"),
    ("labels beyond num_classes", "[sample]", "[conditioning]\nnum_classes = 5\n[sample]",
     "conditioning.num_classes: the 'train' split's labels run 0..9, outside 0..4"),
    ("an image column as the label", "[sample]", '[conditioning]\nnum_classes = 10\nlabel = "image"\n[sample]',
     "conditioning.label: column 'image' of dataset 'digits' does not hold integer class labels"),
]


@pytest.mark.parametrize("desc,old,new,fragment", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_recipe_gives_one_line_and_exit_2(tmp_path, desc, old, new, fragment):
    recipe = tiny_with(tmp_path, old, new)
    code, err = run_cli("run", str(recipe), "--run-dir", str(tmp_path / "run"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert fragment in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("desc,old,new,fragment", BROKEN, ids=[b[0] for b in BROKEN])
def test_recipe_check_rejects_whatever_run_rejects_before_training(tmp_path, desc, old, new, fragment):
    code, err = run_cli("recipe", "check", str(tiny_with(tmp_path, old, new)))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert fragment in err and "Traceback" not in err


def test_errors_name_the_file(tmp_path):
    recipe = tiny_with(tmp_path, "steps = 6", "stpes = 6", name="named.toml")
    code, err = run_cli("recipe", "check", str(recipe))
    assert code == 2 and err.startswith(f"error: {recipe}: unknown key 'train.stpes'")


def test_missing_recipe_file_and_bad_set(tmp_path):
    code, err = run_cli("recipe", "check", str(tmp_path / "nope.toml"))
    assert code == 2 and "recipe file not found" in err
    code, err = run_cli("recipe", "check", str(TINY), "--set", "train.steps")
    assert code == 2 and "expected KEY.PATH=VALUE" in err


@pytest.mark.slow  # about 2 s: builds every shipped recipe
def test_recipe_check_accepts_the_shipped_recipes(capsys, tmp_path):
    from PIL import Image

    recipes = sorted((Path(__file__).parents[1] / "recipes").rglob("*.toml"))
    own_data = [str(p) for p in recipes if p.parent.name == "paper256"]  # image folders the user provides
    main(["recipe", "check", str(TINY), *(str(p) for p in recipes if str(p) not in own_data)])  # exit status 0
    Image.new("RGB", (300, 300)).save(tmp_path / "one.png")
    main(["recipe", "check", *own_data, "--set", f'data.dataset.path="{tmp_path}"'])
    out = capsys.readouterr().out
    assert out.count("ok: ") == 1 + len(recipes)
    assert "quickstart.toml (mnist-5k 16px, unet2d 1.1M parameters, eps/fixed_beta/simple, T=1000" in out
    assert "lsun_bedroom_large.toml (imagefolder 256px, unet2d 255.7M parameters" in out  # built on the meta device
    code, err = run_cli("recipe", "check", own_data[0])
    assert code == 2 and "data.dataset: data folder '" in err and "' does not exist" in err


def test_overrides_are_typed_and_nested(registry):
    recipe, resolved = load_recipe(TINY, registry, ["train.steps=200", "data.dataset.name=mnist-5k",
                                                    "diffusion.schedule.T=1000", "train.lr=3e-4"])
    assert recipe.train.steps == 200 and recipe.train.lr == 3e-4
    assert resolved["data"]["dataset"]["name"] == "mnist-5k"
    assert resolved["diffusion"]["schedule"]["T"] == 1000
    assert resolved["train"]["ema_decay"] == 0.9999  # defaults are filled in


def test_extends_merges_tables_and_detects_cycles(tmp_path, registry):
    base = write(tmp_path, TINY.read_text(), "base.toml")
    child = write(tmp_path, 'extends = "base.toml"\n[diffusion]\nparameterization = { name = "x0" }\n', "child.toml")
    recipe, _ = load_recipe(child, registry)
    assert recipe.diffusion.parameterization.name == "x0"
    assert recipe.diffusion.schedule.params == {"T": 50}  # kept from the base
    write(tmp_path, 'extends = "b.toml"\n', "a.toml")
    write(tmp_path, 'extends = "a.toml"\n', "b.toml")
    code, err = run_cli("recipe", "check", str(tmp_path / "a.toml"))
    assert code == 2 and "forms a cycle" in err
    assert base.exists()
