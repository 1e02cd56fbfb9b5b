"""predict: the smoothed classifiers' answers, with their certificates, for a folder of images or
an array file."""

from dmae_pipeline.pipelines.predict.pipeline import create_pipeline

__all__ = ["create_pipeline"]
