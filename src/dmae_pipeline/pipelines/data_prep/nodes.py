"""Nodes of the data_prep pipeline; the work is in ``dmae_pipeline.data``."""

from __future__ import annotations

import logging

from dmae_pipeline import distributed
from dmae_pipeline.data import prepare
from dmae_pipeline.params import DataPrepParams

logger = logging.getLogger(__name__)


def prepare_dataset(data_prep: DataPrepParams) -> tuple[dict, dict, dict, dict]:
    """Read the source and split it: the dataset spec and the train, validation and test splits."""
    with distributed.main_first():  # under torchrun a download (data_prep.download) happens once
        spec, splits = prepare(**data_prep.prepare_args())
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
