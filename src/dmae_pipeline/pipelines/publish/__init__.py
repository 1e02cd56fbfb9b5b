"""publish: every certified model as a smoothed-classifier MLflow model, logged and registered."""

from dmae_pipeline.pipelines.publish.pipeline import create_pipeline

__all__ = ["create_pipeline"]
