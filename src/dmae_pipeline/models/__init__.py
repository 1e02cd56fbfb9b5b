"""DMAE encoder-decoder, the finetuning classifier and checkpoint import/export (torch + timm)."""

from dmae_pipeline.models.checkpoint import (
    cpu_state,
    export_finetuned,
    export_pretrained,
    load_pretrained,
)
from dmae_pipeline.models.classifier import ViTClassifier, build_classifier, classifier_config
from dmae_pipeline.models.dmae import DMAE, build_dmae, dmae_config
from dmae_pipeline.models.init import load_classifier, load_init, read_init, seeded
from dmae_pipeline.models.presets import PRESETS, encoder_config

__all__ = [
    "DMAE",
    "PRESETS",
    "ViTClassifier",
    "build_classifier",
    "build_dmae",
    "classifier_config",
    "cpu_state",
    "dmae_config",
    "encoder_config",
    "export_finetuned",
    "export_pretrained",
    "load_classifier",
    "load_init",
    "load_pretrained",
    "read_init",
    "seeded",
]
