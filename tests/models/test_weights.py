"""Import of the released formats and the pipeline's own, export, and refusals."""

from __future__ import annotations

import argparse
import logging
import pickle

import pytest
import torch
from timm.layers import resample_abs_pos_embed

from dmae_pipeline.io import atomic_torch_save, safe_torch_load
from dmae_pipeline.models import (
    build_classifier,
    build_dmae,
    export_finetuned,
    export_pretrained,
    load_pretrained,
)
from dmae_pipeline.models.pos_embed import sincos_pos_embed_2d

BLOCK = {
    "norm1.weight": lambda d: (d,),
    "norm1.bias": lambda d: (d,),
    "attn.qkv.weight": lambda d: (3 * d, d),
    "attn.qkv.bias": lambda d: (3 * d,),
    "attn.proj.weight": lambda d: (d, d),
    "attn.proj.bias": lambda d: (d,),
    "norm2.weight": lambda d: (d,),
    "norm2.bias": lambda d: (d,),
    "mlp.fc1.weight": lambda d: (4 * d, d),
    "mlp.fc1.bias": lambda d: (4 * d,),
    "mlp.fc2.weight": lambda d: (d, 4 * d),
    "mlp.fc2.bias": lambda d: (d,),
}


def released_dmae_state(dim=32, depth=2, dec=16, dec_depth=1, grid=2, p=4, c=3) -> dict:
    """A state dict written by hand with the released DMAE key names and shapes."""
    g = torch.Generator().manual_seed(0)
    shapes = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + grid * grid, dim),
        "patch_embed.proj.weight": (dim, c, p, p),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
        "mask_token": (1, 1, dec),
        "decoder_embed.weight": (dec, dim),
        "decoder_embed.bias": (dec,),
        "decoder_pos_embed": (1, 1 + grid * grid, dec),
        "decoder_norm.weight": (dec,),
        "decoder_norm.bias": (dec,),
        "decoder_pred.weight": (p * p * c, dec),
        "decoder_pred.bias": (p * p * c,),
    }
    for i in range(depth):
        shapes.update({f"blocks.{i}.{k}": f(dim) for k, f in BLOCK.items()})
    for i in range(dec_depth):
        shapes.update({f"decoder_blocks.{i}.{k}": f(dec) for k, f in BLOCK.items()})
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def test_released_dmae_file_of_another_grid_loads_into_a_dmae(tiny, tmp_path, caplog):
    """The fixed sin-cos tables are computed for the model's own grid, never resampled."""
    released = released_dmae_state(grid=4)  # trained at 16x16 inputs: a 4x4 grid
    path = tmp_path / "dmae_tiny_sigma_0.25.pth"
    torch.save(released, path)
    model = build_dmae("tiny", **{**tiny, "img_size": 32})  # an 8x8 grid
    with caplog.at_level(logging.INFO, logger="dmae_pipeline.models.weights"):
        missing, unexpected = load_pretrained(model, path)
    assert missing == [] and unexpected == []
    assert torch.equal(model.pos_embed, sincos_pos_embed_2d(32, 8))
    assert torch.equal(model.decoder_pos_embed, sincos_pos_embed_2d(16, 8))
    state = model.state_dict()
    for key, value in released.items():
        if "pos_embed" not in key:
            assert torch.equal(state[key], value), key
    (message,) = [r.getMessage() for r in caplog.records]
    assert "fixed pos_embed recomputed for the 8x8 grid (the checkpoint's 4x4" in message
    assert "fixed decoder_pos_embed recomputed for the 8x8 grid" in message


@pytest.mark.parametrize(("old", "new"), [(4, 8), (4, 2)], ids=["up", "down"])
def test_a_learnable_table_is_resampled_as_timm_does(tiny_encoder, old, new, caplog):
    source = build_classifier("tiny", 10, **{**tiny_encoder, "img_size": 4 * old})
    with torch.no_grad():
        source.pos_embed.normal_(generator=torch.Generator().manual_seed(0))
    model = build_classifier("tiny", 10, **{**tiny_encoder, "img_size": 4 * new})
    with caplog.at_level(logging.INFO, logger="dmae_pipeline.models.weights"):
        assert load_pretrained(model, source.state_dict()) == ([], [])
    expected = resample_abs_pos_embed(source.pos_embed.detach(), new_size=[new, new])
    assert torch.equal(model.pos_embed.detach(), expected)
    assert torch.equal(model.pos_embed[:, 0], source.pos_embed[:, 0])  # the cls row is kept
    assert f"pos_embed resampled from a {old}x{old} to a {new}x{new} grid" in caplog.text


def test_released_dmae_file_into_a_classifier_reports_the_rest(tiny_encoder, caplog):
    released = released_dmae_state(grid=4)
    model = build_classifier("tiny", 10, **tiny_encoder)
    with caplog.at_level(logging.INFO, logger="dmae_pipeline.models.weights"):
        missing, unexpected = load_pretrained(model, released)
    assert sorted(missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert "mask_token" in unexpected and "norm.weight" in unexpected
    assert {k for k in unexpected if k.startswith("decoder_blocks.")} == {
        f"decoder_blocks.0.{k}" for k in BLOCK
    }
    assert torch.equal(model.blocks[1].attn.qkv.weight, released["blocks.1.attn.qkv.weight"])
    assert torch.equal(model.pos_embed.detach(), released["pos_embed"])
    (message,) = [r.getMessage() for r in caplog.records]
    assert "Missing" in message and "head.weight" in message
    assert "decoder_blocks.* (12)" in message


@pytest.mark.parametrize(
    "prefix", ["module.", "_orig_mod.", "_orig_mod.module.", "module._orig_mod."]
)
def test_finetuned_shape_with_wrapper_prefix_loads(tiny_encoder, tmp_path, prefix):
    """DDP's and torch.compile's prefixes, also nested (the engine compiles a DDP model)."""
    source = build_classifier("tiny", 10, **tiny_encoder)
    wrapped = {f"{prefix}{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "finetuned.pth"
    checkpoint = {"model": wrapped, "optimizer": {}, "epoch": 3, "args": {"lr": 1e-3}}
    atomic_torch_save({**checkpoint, "config": source.config}, path)
    model = build_classifier("tiny", 10, **tiny_encoder)
    assert load_pretrained(model, path) == ([], [])
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(model.eval()(x), source.eval()(x))


def test_shape_mismatch_is_refused_naming_the_key(tiny):
    wider = build_dmae("tiny", **{**tiny, "embed_dim": 48})
    model = build_dmae("tiny", **tiny)
    with pytest.raises(ValueError, match=r"'cls_token' has shape \(1, 1, 48\).*\(1, 1, 32\)"):
        load_pretrained(model, wider.state_dict())
    deeper = build_dmae("tiny", **{**tiny, "depth": 3})
    with pytest.raises(ValueError, match="3 'blocks' but the model has 2"):
        load_pretrained(model, deeper.state_dict())
    other_patch = released_dmae_state(p=2, grid=8)
    with pytest.raises(ValueError, match=r"patch_embed\.proj\.weight"):
        load_pretrained(model, other_patch)


def test_unusable_sources_are_refused(tiny, tmp_path):
    model = build_dmae("tiny", **tiny)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        load_pretrained(model, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        load_pretrained(model, {"model": {"a": 1}})
    with pytest.raises(ValueError, match="shares no parameter name"):
        load_pretrained(model, {"encoder.weight": torch.zeros(2)})


def test_export_then_load_round_trip(tiny, tmp_path):
    source = build_dmae("tiny", **tiny)
    path = tmp_path / "dmae_pretrained.pth"
    export_pretrained(source, path)
    plain = safe_torch_load(path)
    assert set(plain) == set(source.state_dict())  # the released plain format
    torch.manual_seed(99)
    model = build_dmae("tiny", **tiny)
    assert load_pretrained(model, path) == ([], [])
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    imgs = torch.rand(2, 3, 16, 16)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(model(imgs, generator=gen())[0], source(imgs, generator=gen())[0])


def test_export_finetuned_format(tiny_encoder, tmp_path):
    source = build_classifier("tiny", 4, **tiny_encoder)
    path = tmp_path / "finetuned.pth"
    export_finetuned(source, path, epoch=7, args={"sigma": 0.25})
    checkpoint = safe_torch_load(path)
    assert set(checkpoint) == {"model", "epoch", "args"}
    assert checkpoint["epoch"] == 7 and checkpoint["args"] == {"sigma": 0.25}
    model = build_classifier("tiny", 4, **tiny_encoder)
    assert load_pretrained(model, path) == ([], [])
    assert torch.equal(model.head.weight, source.head.weight)


def save_like_the_public_code(model: torch.nn.Module, path) -> argparse.Namespace:
    """A training checkpoint as the public DMAE/MAE code's save_model writes it: the state dicts
    of the model, the optimizer and the AMP scaler, the epoch and the argparse arguments."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    model(torch.rand(2, 3, 16, 16), generator=torch.Generator().manual_seed(0))[0].backward()
    optimizer.step()
    args = argparse.Namespace(
        batch_size=64,
        epochs=1100,
        accum_iter=1,
        model="dmae_vit_base_patch16",
        input_size=224,
        mask_ratio=0.75,
        norm_pix_loss=True,
        sigma=0.25,
        weight_decay=0.05,
        lr=0.0024,
        blr=1.5e-4,
        min_lr=0.0,
        warmup_epochs=40,
        data_path="/datasets/imagenet",
        output_dir="./output_dir",
        log_dir="./output_dir",
        device="cuda",
        seed=0,
        resume="",
        start_epoch=0,
        num_workers=10,
        pin_mem=True,
        world_size=64,
        local_rank=-1,
        dist_on_itp=False,
        dist_url="env://",
        distributed=True,
        rank=0,
        gpu=0,
        dist_backend="nccl",
    )
    to_save = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 1099,
        "scaler": torch.amp.GradScaler("cpu").state_dict(),
        "args": args,
    }
    torch.save(to_save, path)
    return args


def test_a_training_checkpoint_of_the_public_code_loads(tiny, tmp_path):
    source = build_dmae("tiny", **tiny)
    path = tmp_path / "checkpoint-1099.pth"
    args = save_like_the_public_code(source, path)
    checkpoint = safe_torch_load(path)
    assert checkpoint["args"] == args and checkpoint["epoch"] == 1099
    assert checkpoint["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    model = build_dmae("tiny", **tiny)
    assert load_pretrained(model, path) == ([], [])
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # The allowance is the loader's own: plain weights-only loading still refuses the file.
    with pytest.raises(pickle.UnpicklingError, match=r"argparse\.Namespace"):
        torch.load(path, weights_only=True)


class _WritesAFile:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.mark.parametrize("where", ["top", "in_args"])
def test_a_file_that_would_run_code_is_refused(tmp_path, where):
    marker = tmp_path / "marker"
    payload = _WritesAFile(marker)
    if where == "in_args":
        payload = {"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=payload)}
    path = tmp_path / "crafted.pth"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"crafted\.pth is not a readable torch file .*holds code"):
        safe_torch_load(path)
    with pytest.raises(ValueError, match="holds code"):
        load_pretrained(torch.nn.Linear(2, 2), path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the same file through a full unpickler runs the code
    assert marker.read_text() == "ran"
