"""Denoising Masked AutoEncoders for certified robustness, as a Kedro project."""

import logging

__version__ = "0.1.0"

# MLflow warns, for every PythonModel subclass (kedro-mlflow's, the served classifier's), that its
# predict method has no type hints, under a warnings filter of its own; the served model declares
# its signature itself. Kedro sends warnings to the "py.warnings" logger: drop the line there.
logging.getLogger("py.warnings").addFilter(
    lambda record: "Add type hints to the `predict` method" not in record.getMessage()
)
