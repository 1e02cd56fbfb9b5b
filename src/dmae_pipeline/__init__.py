"""Denoising Masked AutoEncoders for certified robustness, as a Kedro project."""

import os

# OpenMP threads that spin while they wait for each other run several times slower on a machine
# other jobs keep busy (docs/benchmarks.md). The runtime reads the policy once, when torch loads
# it, so it is set here, before `kedro run` (under torchrun and DVC too) imports torch; a value
# the user set is kept (OMP_WAIT_POLICY=ACTIVE spins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
