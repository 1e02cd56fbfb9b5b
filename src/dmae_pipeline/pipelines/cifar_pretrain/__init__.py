"""cifar_pretrain: continue DMAE pretraining on the downstream data."""

from dmae_pipeline.pipelines.cifar_pretrain.pipeline import create_pipeline

__all__ = ["create_pipeline"]
