"""pretrain: train a DMAE from scratch on the prepared training split."""

from dmae_pipeline.pipelines.pretrain.pipeline import create_pipeline

__all__ = ["create_pipeline"]
