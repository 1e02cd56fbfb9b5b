"""Denoising Masked AutoEncoder: a ViT encoder on the visible *noisy* patches, a light decoder that
reconstructs the *clean* image (Wu et al. 2023, built on He et al.'s MAE).

With ``sigma=0`` and ``loss_on="masked"`` this is exactly MAE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal, NamedTuple, get_args

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from dmae_pipeline.models.pos_embed import sincos_pos_embed_2d
from dmae_pipeline.models.preprocess import normalize, register_normalization, resize
from dmae_pipeline.models.presets import DECODER_KEYS, DMAE_DEFAULTS, ENCODER_KEYS, resolve_config

LossOn = Literal["all", "masked"]
"""The patches the loss is averaged over."""
NORM_PIX_EPS = 1e-6


def visible_patches(num_patches: int, mask_ratio: float) -> int:
    """How many of the ``num_patches`` patches the encoder sees: int(L * (1 - mask_ratio)) (MAE)."""
    return int(num_patches * (1 - mask_ratio))


def check_mask_ratio(mask_ratio: float, num_patches: int) -> None:
    """Refuse a mask ratio that leaves the encoder no visible patch."""
    if visible_patches(num_patches, mask_ratio) < 1:
        raise ValueError(
            f"mask_ratio={mask_ratio!r} leaves no visible patch of the {num_patches} patches"
        )


def norm_pix_stats(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each patch's mean and standard deviation (unbiased variance + eps) that ``norm_pix_loss``
    standardizes its target with."""
    mean = patches.mean(dim=-1, keepdim=True)
    return mean, (patches.var(dim=-1, keepdim=True) + NORM_PIX_EPS) ** 0.5


class Reconstruction(NamedTuple):
    """Everything one forward pass computes; images are normalized and at the model resolution."""

    loss: torch.Tensor  # scalar
    pred: torch.Tensor  # [B, L, p*p*C], in norm_pix units when norm_pix_loss
    mask: torch.Tensor  # [B, L], 1 = masked (hidden from the encoder)
    clean: torch.Tensor  # [B, C, H, W], the target image
    noisy: torch.Tensor  # [B, C, H, W], the encoder's input before masking


def _draw(
    fn: Callable[..., torch.Tensor],
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """A float32 ``torch.rand``/``torch.randn`` draw from ``generator`` (on the generator's own
    device, so a CPU generator also serves a CUDA model), moved to ``device``."""
    where = generator.device if generator is not None else device
    return fn(tuple(shape), generator=generator, device=where, dtype=torch.float32).to(device)


class DMAE(nn.Module):
    """Encoder and decoder with timm's ``PatchEmbed`` and ``Block``, so that state-dict names match
    timm's VisionTransformer and the released DMAE/MAE checkpoints."""

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        sigma: float = 0.25,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        loss_on: LossOn = "all",
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        super().__init__()
        if loss_on not in get_args(LossOn):
            raise ValueError(f"loss_on must be one of {get_args(LossOn)}, got {loss_on!r}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.sigma, self.mask_ratio = float(sigma), float(mask_ratio)
        self.norm_pix_loss, self.loss_on = bool(norm_pix_loss), loss_on
        register_normalization(self, mean, std)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        block = partial(Block, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm_layer)

        # encoder
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        check_mask_ratio(mask_ratio, num_patches)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False
        )
        self.blocks = nn.Sequential(*[block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = norm_layer(embed_dim)

        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.Sequential(
            *[block(decoder_embed_dim, decoder_num_heads) for _ in range(decoder_depth)]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size * patch_size * in_chans)

        self.config: dict[str, Any] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        """MAE's initialization: fixed sin-cos tables, xavier-uniform linear layers and patch
        projection, N(0, 0.02) tokens."""
        grid = self.img_size // self.patch_size
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], grid))
            self.decoder_pos_embed.copy_(
                sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1], grid)
            )
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    # --- timm conventions, used by the optimizer's parameter groups ---
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed", "mask_token", "decoder_pos_embed"}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm layer grouping: embeddings, then each block; the rest (norm, mask token, decoder)
        is unmatched, which timm puts in one last group."""
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed", blocks=r"^blocks\.(\d+)")

    # --- patches ---
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, L, p*p*C], a patch flattened in (row, col, channel) order (MAE)."""
        p, c = self.patch_size, self.in_chans
        b, h = imgs.shape[0], imgs.shape[2] // p
        w = imgs.shape[3] // p
        x = imgs.reshape(b, c, h, p, w, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, h * w, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, p*p*C] -> [B, C, H, W] (square grid)."""
        p, c = self.patch_size, self.in_chans
        h = w = self.img_size // p
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    # --- the method ---
    def corrupt(
        self, imgs: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[0,1] images at the native resolution -> (clean, noisy), both resized and normalized.

        The noise N(0, sigma^2) is drawn in float32 and added at the native resolution, before the
        bicubic resize, as certification adds it.
        """
        clean = imgs.float()
        noisy = clean
        if self.sigma > 0:
            noisy = clean + self.sigma * _draw(torch.randn, clean.shape, generator, clean.device)
        return (
            normalize(self, resize(clean, self.img_size)),
            normalize(self, resize(noisy, self.img_size)),
        )

    @staticmethod
    def random_masking(
        x: torch.Tensor, mask_ratio: float, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample masking by argsort of uniform ``noise`` [B, L], keeping the
        int(L * (1 - mask_ratio)) tokens of lowest noise.

        Returns (kept tokens, mask with 1 = removed, ids that restore the original order).
        """
        b, length, dim = x.shape
        len_keep = visible_patches(length, mask_ratio)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        mask = torch.ones(b, length, device=x.device)
        mask[:, :len_keep] = 0
        return x_kept, torch.gather(mask, 1, ids_restore), ids_restore

    def forward_encoder(
        self, x: torch.Tensor, mask_ratio: float, mask_noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.patch_embed(x) + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, mask_noise)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = self.norm(self.blocks(torch.cat([cls, x], dim=1)))
        return x, mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)
        b, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(b, length + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x)[:, 1:, :]

    def target_patches(self, clean: torch.Tensor) -> torch.Tensor:
        """Patchified clean image; with norm_pix_loss each patch is standardized by its own mean
        and (unbiased) variance, eps 1e-6."""
        target = self.patchify(clean)
        if self.norm_pix_loss:
            mean, std = norm_pix_stats(target)
            target = (target - mean) / std
        return target

    def forward_loss(
        self, clean: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Per-patch MSE against the clean target, averaged over all patches or the masked ones."""
        per_patch = ((pred.float() - self.target_patches(clean)) ** 2).mean(dim=-1)
        if self.loss_on == "all":
            return per_patch.mean()
        return (per_patch * mask).sum() / mask.sum()

    def reconstruct(
        self,
        imgs: torch.Tensor,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Reconstruction:
        """The full forward pass with its intermediate images (for figures and tests)."""
        if mask_ratio is None:
            mask_ratio = self.mask_ratio
        check_mask_ratio(mask_ratio, self.num_patches)
        if imgs.ndim != 4 or imgs.shape[1] != self.in_chans:
            raise ValueError(
                f"imgs must be [B, {self.in_chans}, H, W] in [0, 1], got shape {tuple(imgs.shape)}"
            )
        # The mask is drawn before the pixel noise so that, for one seed, it does not depend on
        # sigma: MAE (sigma 0) and DMAE runs see the same masks.
        mask_noise = _draw(torch.rand, (imgs.shape[0], self.num_patches), generator, imgs.device)
        clean, noisy = self.corrupt(imgs, generator)
        latent, mask, ids_restore = self.forward_encoder(noisy, mask_ratio, mask_noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(clean, pred, mask)
        return Reconstruction(loss, pred, mask, clean, noisy)

    def forward(
        self,
        imgs: torch.Tensor,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs [B, C, h, w] in [0, 1] at the native resolution -> (loss, pred, mask) as MAE."""
        out = self.reconstruct(imgs, mask_ratio, generator)
        return out.loss, out.pred, out.mask


def dmae_config(preset: str, **overrides: Any) -> dict[str, Any]:
    """The preset (pico, nano, tiny, small, base, large) with free overrides of img_size,
    patch_size, in_chans, embed_dim, depth, num_heads, decoder_embed_dim, decoder_depth,
    decoder_num_heads, mlp_ratio, sigma, mask_ratio, norm_pix_loss, loss_on, mean, std: the
    preset and every resolved argument of a DMAE."""
    keys = (*ENCODER_KEYS, *DECODER_KEYS, "mean", "std", *DMAE_DEFAULTS)
    return resolve_config(preset, overrides, keys, DMAE_DEFAULTS)


def build_dmae(preset: str, **overrides: Any) -> DMAE:
    """A DMAE from a preset and overrides (see :func:`dmae_config`).

    ``model.config`` holds the preset and every resolved argument: ``build_dmae(**model.config)``
    rebuilds the same architecture.
    """
    config = dmae_config(preset, **overrides)
    model = DMAE(**{k: v for k, v in config.items() if k != "preset"})
    model.config = config
    return model
