"""data_prep: read the configured source and write the dataset spec and the three splits."""

from dmae_pipeline.pipelines.data_prep.pipeline import create_pipeline

__all__ = ["create_pipeline"]
