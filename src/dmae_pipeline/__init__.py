"""Denoising Masked AutoEncoders for certified robustness, as a Kedro project."""

import logging
import os

# OpenMP threads that spin while they wait for each other run several times slower on a machine
# other jobs keep busy (docs/benchmarks.md). The runtime reads the policy once, when torch loads
# it, so it is set here, before `kedro run` (under torchrun and DVC too) imports torch; a value
# the user set is kept (OMP_WAIT_POLICY=ACTIVE spins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# MLflow warns, for every PythonModel subclass (kedro-mlflow's, the served classifier's), that its
# predict method has no type hints, under a warnings filter of its own; the served model declares
# its signature itself. Kedro sends warnings to the "py.warnings" logger: drop the line there.
logging.getLogger("py.warnings").addFilter(
    lambda record: "Add type hints to the `predict` method" not in record.getMessage()
)
