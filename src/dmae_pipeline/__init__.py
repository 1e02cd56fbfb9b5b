"""Denoising Masked AutoEncoders for certified robustness, as a Kedro project."""

__version__ = "0.1.0"
