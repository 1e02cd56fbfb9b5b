"""dmae_training: DMAE pretraining (pretrain) and its continuation on the downstream data
(cifar_pretrain), two instances of one pipeline."""

from dmae_pipeline.pipelines.dmae_training.pipeline import create_pipeline

__all__ = ["create_pipeline"]
