"""Analytic-DPM for ddpm-kit: the KL-optimal reverse variance of a trained model (see README.md)."""

from .analytic import AnalyticVariance, analytic_diffusion, estimate_gamma, trajectory_variances

__all__ = ["AnalyticVariance", "analytic_diffusion", "estimate_gamma", "trajectory_variances"]
