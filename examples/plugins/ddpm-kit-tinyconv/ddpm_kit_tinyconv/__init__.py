"""A tiny convolutional backbone: an example backbone plugin, written against ``ddpm_kit.api`` only."""

import math

import torch
from torch import nn

from ddpm_kit.api import DdpmKitError, hookimpl


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """The transformer's sinusoidal embedding of timesteps ``t`` [B]: [sin(t w_k), cos(t w_k)],
    w_k = max_period^(-k / (dim / 2)) for k = 0 .. dim/2 - 1 (Vaswani et al. 2017; Ho et al.'s choice)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class Block(nn.Module):
    """GroupNorm - SiLU - conv, plus the time embedding as a per-channel shift, with a residual."""

    def __init__(self, channels: int, time_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.time = nn.Linear(time_dim, channels)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.conv(nn.functional.silu(self.norm(h)) + self.time(emb)[:, :, None, None])


class TinyConv(nn.Module):
    """A few residual 3x3 conv blocks at full resolution, each shifted by an MLP of the timestep's
    sinusoidal embedding: forward(x [B, C_in, H, W], t [B] long) -> [B, C_out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, channels: int = 32, depth: int = 2,
                 time_dim: int = 64) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.embed = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList(Block(channels, time_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.GroupNorm(1, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.embed(timestep_embedding(t, self.time_dim).to(x.dtype))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


def tinyconv(in_channels: int, out_channels: int, image_size: int, channels: int = 32, depth: int = 2,
             time_dim: int = 64) -> nn.Module:
    """A tiny fully convolutional net with a sinusoidal time embedding (for tests and CPU demos).

    The engine supplies ``in_channels``, ``out_channels`` (2C with a learned variance) and
    ``image_size``; ``num_classes`` is not declared, so a class-conditional run refuses it by name.
    """
    if channels < 1 or depth < 0 or time_dim < 2 or time_dim % 2:
        raise DdpmKitError(f"backbone 'tinyconv' needs channels >= 1, depth >= 0 and an even time_dim >= 2, got "
                           f"channels={channels}, depth={depth}, time_dim={time_dim}")
    if image_size < 1:
        raise DdpmKitError(f"backbone 'tinyconv' needs image_size >= 1, got {image_size}")
    return TinyConv(in_channels, out_channels, channels, depth, time_dim)


@hookimpl
def register_backbones(register):
    register("tinyconv", tinyconv)
