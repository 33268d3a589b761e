"""ddpm-kit: a plugin-based framework for Denoising Diffusion Probabilistic Models."""

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402

__all__ = ["__version__", "hookimpl"]
