"""conf/imagenet_large: the paper's ViT-L/16 recipe, and conf/imagenet's in everything else."""

from __future__ import annotations

import torch

from conftest import flat
from dmae_pipeline.models import build_dmae
from test_params import load, validated

# (block, dotted key): (ViT-B in conf/imagenet, ViT-L in conf/imagenet_large), per the paper
VIT_L = {
    ("pretrain", "model.preset"): ("base", "large"),
    ("pretrain", "train.epochs"): (1100, 1600),
    ("finetune", "train.epochs"): (100, 50),
    ("finetune", "train.blr"): (5e-4, 1e-3),
    ("finetune", "layer_decay"): (0.65, 0.75),
    ("finetune", "model.drop_path_rate"): (0.1, 0.2),
}
PUBLISHED = ("report", "reference_points")  # each env its model's published row
# A ViT-L finetunes in smaller micro-batches on one GPU; the effective batch stays 1024.
MICRO_BATCH = {("finetune", "train.batch_size"), ("finetune", "train.accum_iter")}


def test_imagenet_large_is_the_papers_vit_l_recipe():
    p = validated("imagenet_large")
    pretrain, finetune = p["pretrain"], p["finetune"]
    dmae = pretrain.architecture({})
    assert (dmae["embed_dim"], dmae["depth"], dmae["num_heads"], dmae["patch_size"]) == (
        1024, 24, 16, 16
    )  # fmt: skip
    assert (dmae["decoder_embed_dim"], dmae["decoder_depth"], dmae["decoder_num_heads"]) == (
        512, 8, 16
    )  # fmt: skip
    assert (dmae["sigma"], dmae["mask_ratio"], dmae["loss_on"], dmae["norm_pix_loss"]) == (
        0.25, 0.75, "all", True
    )  # fmt: skip
    t = pretrain.train
    assert (t.epochs, t.warmup_epochs, t.blr, t.effective_batch) == (1600, 40, 1.5e-4, 4096)
    t = finetune.train
    assert (t.epochs, t.warmup_epochs, t.blr, t.effective_batch, t.min_lr) == (
        50, 5, 1e-3, 1024, 1e-6
    )  # fmt: skip
    assert (finetune.layer_decay, finetune.model.drop_path_rate) == (0.75, 0.2)
    assert (finetune.mixup, finetune.cutmix, finetune.label_smoothing) == (0.8, 1.0, 0.1)
    assert finetune.init == "pretrain" and finetune.sigmas == [0.25, 0.5, 1.0]
    (published,) = p["report"].reference_points
    assert "ViT-L" in published.label
    assert published.radii == [0.5, 1.0, 1.5, 2.0, 3.0]
    assert published.certified_accuracy == [0.736, 0.646, 0.537, 0.415, 0.275]


def test_imagenet_large_differs_from_imagenet_in_the_vit_l_keys_only():
    """Envs do not stack: conf/imagenet_large repeats conf/imagenet, and must not drift from it."""
    vit_b, vit_l = load("imagenet"), load("imagenet_large")
    assert vit_b.keys() == vit_l.keys()
    differing = {}
    for block in vit_b:
        b, v = flat(vit_b[block] or {}), flat(vit_l[block] or {})
        differing |= {
            (block, key): (b.get(key), v.get(key))
            for key in b.keys() | v.keys()
            if b.get(key) != v.get(key)
        }
    assert {k: d for k, d in differing.items() if k not in {*MICRO_BATCH, PUBLISHED}} == VIT_L


def test_the_vit_l_encoder_has_the_papers_304m_parameters():
    with torch.device("meta"):  # sizes only, no weights
        dmae = build_dmae(**validated("imagenet_large")["pretrain"].architecture({}))
    encoder = sum(p.numel() for n, p in dmae.named_parameters() if not n.startswith("decoder"))
    assert 303e6 < encoder < 305e6
