"""Fast paths give the plain path's results within their precision's tolerance."""

import pytest
import torch

from ddpm_kit.engine import build_components, sample_images
from ddpm_kit.recipe import load_recipe
from helpers import SHORT_GRAPH, TINY


def components_with(registry, *overrides):
    recipe, _ = load_recipe(TINY, registry, ["diffusion.schedule.T=40", "sample.batch_size=32", *overrides])
    return build_components(recipe, registry)


def trained_tiny_unet(c):
    torch.manual_seed(0)
    model = c.build_backbone()
    with torch.no_grad():  # random but not tiny weights, so the samples depend on the network
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def raw_samples(c, model):
    """Float samples in [-1, 1] before the uint8 rounding, via the recipe's sampler settings."""
    out = []
    sample_images(c, model, 32, torch.device("cpu"), seed=4,
                  callback=lambda step: out.append(step["x"].float()) if step["i"] == 0 else None)
    return out[0]


def first_conv_outputs(model):
    """What the UNet's first convolution produced in each forward (memory format and dtype): the
    proof that a fast path ran, not only that its results agree."""
    seen = []
    model.unet.conv_in.register_forward_hook(lambda module, args, out: seen.append(
        (out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous(), out.dtype)))
    return seen


def test_channels_last_sampling_equals_the_plain_path(registry):
    plain = components_with(registry)
    fast = components_with(registry, "sample.channels_last=true")
    model = trained_tiny_unet(plain)
    seen = first_conv_outputs(model)
    a = raw_samples(plain, model)
    assert seen and not any(channels_last for channels_last, _ in seen)
    seen.clear()
    b = raw_samples(fast, model)
    assert len(seen) == 40 and all(channels_last for channels_last, _ in seen)  # every step ran channels-last
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_bf16_sampling_is_statistically_equivalent(registry):
    plain = components_with(registry)
    fast = components_with(registry, 'sample.mixed_precision="bf16"')
    model = trained_tiny_unet(plain)
    seen = first_conv_outputs(model)
    a = raw_samples(plain, model)
    assert {dtype for _, dtype in seen} == {torch.float32}
    seen.clear()
    b = raw_samples(fast, model)
    assert len(seen) == 40 and {dtype for _, dtype in seen} == {torch.bfloat16}  # autocast reached the network
    # same noise: bf16 changes each network output by ~1e-2 relative; the samples stay close
    assert (a - b).abs().mean().item() < 0.05
    assert b.mean().item() == pytest.approx(a.mean().item(), abs=0.03)
    assert b.std().item() == pytest.approx(a.std().item(), rel=0.05)


def test_channels_last_training_step_equals_the_plain_step(registry):
    plain = components_with(registry)
    grads = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        model = trained_tiny_unet(plain).train().to(memory_format=memory_format)
        x0 = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
        loss = plain.diffusion.training_losses(model, x0, plain.objective, t=torch.arange(8) * 5,
                                               noise=torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)))
        loss["loss"].mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # inductor compiles the one-level UNet in 15-40 s on a cold cache
def test_compiled_sampling_equals_the_plain_path(registry):
    plain = components_with(registry, *SHORT_GRAPH)
    fast = components_with(registry, "sample.compile=true", *SHORT_GRAPH)
    model = trained_tiny_unet(plain)
    a = raw_samples(plain, model)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    b = raw_samples(fast, model)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # dynamo compiled the network
    # fused kernels reorder float32 sums; 40 steps of that stay well under 1e-4
    torch.testing.assert_close(b, a, rtol=0, atol=1e-4)
