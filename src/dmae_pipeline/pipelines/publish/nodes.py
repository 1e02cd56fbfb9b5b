"""The node of the publish pipeline; the work is in ``dmae_pipeline.serving``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from dmae_pipeline import distributed
from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.params import CertifyParams, PublishParams, ReportParams
from dmae_pipeline.reporting.names import sigma_label
from dmae_pipeline.serving import Limits, log_smoothed_classifier, registry_name, with_mode
from dmae_pipeline.smoothing import CertifySettings

logger = logging.getLogger(__name__)


def publish_smoothed_classifiers(
    finetuned_models: Mapping[str, Callable[[], Any]],
    certification_results: pd.DataFrame,
    test_split: Mapping[str, Any],
    dataset_spec: Mapping[str, Any],
    certify: CertifyParams,
    report: ReportParams,
    publish: PublishParams,
) -> dict[str, dict[str, Any]]:
    """Log the smoothed classifier of every certified sigma into the run's MLflow run and register
    it as a new version of ``dmae_<dataset>_sigma_<sigma>``; its requests default to the certify
    settings (sequential mode: the report's radii), the first test image is its input example.

    Returns, per model, its sigma, registered name, version and ``models:/`` URI. Under torchrun
    the main process alone publishes.
    """
    if not distributed.is_main():
        return {}
    settings = certify.model_dump(include={"n0", "n", "alpha", "batch_size", "seed"})
    defaults = with_mode(CertifySettings(**settings), certify.mode, report.radii)
    limits = Limits(max_n=publish.max_n, max_images=publish.max_images)
    image, _ = SplitDataset(test_split, build_transform(dataset_spec, train=False))[0]
    published = {}
    for sigma in sorted(certification_results["sigma"].unique()):
        label = sigma_label(sigma)
        if label not in finetuned_models:
            raise FileNotFoundError(
                f"finetuned_models has no {label}, which certification_results holds: run the "
                "finetune and certify pipelines again"
            )
        name = registry_name(dataset_spec["name"], label)
        info = log_smoothed_classifier(
            finetuned_models[label](),
            dataset_spec,
            defaults,
            limits,
            image[None].numpy(),
            radii=report.radii,
            name=label.replace(".", "_"),  # MLflow's model names have no dots
            registered_model_name=name,
            device=publish.device,
            amp=publish.amp,
        )
        version = int(info.registered_model_version)
        published[label] = {
            "sigma": float(sigma),
            "registered_model": name,
            "version": version,
            "model_uri": f"models:/{name}/{version}",
        }
        logger.info("publish %s: registered %s version %d", label, name, version)
    return published
