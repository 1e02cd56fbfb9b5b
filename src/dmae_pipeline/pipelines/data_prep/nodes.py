"""Nodes of the data_prep pipeline; the work is in ``dmae_pipeline.data``."""

from __future__ import annotations

import logging
from typing import Any

from dmae_pipeline.data import DataPrepConfig, prepare

logger = logging.getLogger(__name__)


def prepare_dataset(data_prep: dict[str, Any]) -> tuple[dict, dict, dict, dict]:
    """Check the parameters, then read the source and split it.

    Returns the dataset spec and the train, validation and test splits.
    """
    config = DataPrepConfig.from_params(data_prep)
    spec, splits = prepare(config)
    logger.info(
        "Prepared %s (%s): %d classes at %dx%d, splits %s",
        spec["name"],
        spec["source"],
        spec["num_classes"],
        spec["image_size"],
        spec["image_size"],
        spec["split_sizes"],
    )
    return spec, splits["train"], splits["val"], splits["test"]
