"""finetune: one noise-augmented ViT classifier per sigma, from a DMAE checkpoint or scratch."""

from dmae_pipeline.pipelines.finetune.pipeline import create_pipeline

__all__ = ["create_pipeline"]
