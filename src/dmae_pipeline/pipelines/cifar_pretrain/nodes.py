"""Continued pretraining runs the pretrain pipeline's node with the cifar_pretrain parameters:
the same DMAE training, started from the pretrain checkpoint or a released DMAE file, on the
downstream data at its native resolution (upsampled to the model's after the noise)."""

from dmae_pipeline.pipelines.pretrain.nodes import stage_node, train_dmae

__all__ = ["stage_node", "train_dmae"]
