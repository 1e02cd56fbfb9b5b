"""certify: randomized-smoothing certificates of the test split for every finetuned model."""

from dmae_pipeline.pipelines.certify.pipeline import create_pipeline

__all__ = ["create_pipeline"]
