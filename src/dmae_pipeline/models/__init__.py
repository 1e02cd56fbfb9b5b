"""DMAE encoder-decoder, the finetuning classifier and weight import/export (torch + timm)."""

from dmae_pipeline.models.architecture import architecture_problems, check_architecture
from dmae_pipeline.models.classifier import ViTClassifier, build_classifier, classifier_config
from dmae_pipeline.models.dmae import DMAE, LossOn, build_dmae, dmae_config
from dmae_pipeline.models.init import (
    finetuned_sigma,
    load_classifier,
    load_init,
    public_classifier_config,
    read_init,
    seeded,
)
from dmae_pipeline.models.presets import PRESETS, encoder_config
from dmae_pipeline.models.weights import (
    cpu_state,
    export_finetuned,
    export_pretrained,
    load_pretrained,
)

__all__ = [
    "DMAE",
    "PRESETS",
    "LossOn",
    "ViTClassifier",
    "architecture_problems",
    "build_classifier",
    "build_dmae",
    "check_architecture",
    "classifier_config",
    "cpu_state",
    "dmae_config",
    "encoder_config",
    "export_finetuned",
    "export_pretrained",
    "finetuned_sigma",
    "load_classifier",
    "load_init",
    "load_pretrained",
    "public_classifier_config",
    "read_init",
    "seeded",
]
