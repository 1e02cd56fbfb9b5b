"""The rules a resolved model config (``dmae_config``, ``classifier_config``) must meet to build a
model that trains: checked before anything is built or trained."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dmae_pipeline.models.dmae import check_mask_ratio, visible_patches


def architecture_problems(config: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``config`` (a DMAE's or a classifier's build arguments), one line each."""
    problems = []
    if config["img_size"] % config["patch_size"]:
        problems.append(
            f"patch_size={config['patch_size']} must divide img_size={config['img_size']}"
        )
    widths = [("embed_dim", "num_heads")]
    if "decoder_embed_dim" in config:
        widths.append(("decoder_embed_dim", "decoder_num_heads"))
    for width, heads in widths:
        if config[width] % 4 or config[width] % config[heads]:
            problems.append(
                f"{width}={config[width]} must be divisible by 4 (2-D sin-cos position "
                f"embedding) and by {heads}={config[heads]}"
            )
    if "mask_ratio" in config and not problems:
        patches = (config["img_size"] // config["patch_size"]) ** 2
        try:
            check_mask_ratio(config["mask_ratio"], patches)
        except ValueError as e:
            problems.append(str(e))
        if (
            config["loss_on"] == "masked"
            and visible_patches(patches, config["mask_ratio"]) == patches
        ):
            problems.append(
                f"mask_ratio={config['mask_ratio']} masks no patch, but loss_on=masked scores "
                "only masked ones"
            )
        if config["norm_pix_loss"] and config["patch_size"] ** 2 * config["in_chans"] < 2:
            problems.append("norm_pix_loss needs at least 2 values per patch")
    return problems


def check_architecture(config: Mapping[str, Any], where: str) -> None:
    """Refuse, with a ValueError naming ``where`` (the dotted key of its model block), a config
    that cannot be built or trains a degenerate model."""
    problems = architecture_problems(config)
    if problems:
        raise ValueError("\n".join(f"{where}: {problem}" for problem in problems))
