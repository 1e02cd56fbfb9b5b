"""DMAE encoder-decoder, the finetuning classifier and checkpoint import/export (torch + timm)."""

from dmae_pipeline.models.checkpoint import export_finetuned, export_pretrained, load_pretrained
from dmae_pipeline.models.classifier import ViTClassifier, build_classifier
from dmae_pipeline.models.dmae import DMAE, build_dmae
from dmae_pipeline.models.presets import PRESETS, encoder_config

__all__ = [
    "DMAE",
    "PRESETS",
    "ViTClassifier",
    "build_classifier",
    "build_dmae",
    "encoder_config",
    "export_finetuned",
    "export_pretrained",
    "load_pretrained",
]
