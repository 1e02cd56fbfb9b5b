"""The node of the pretrain and cifar_pretrain pipelines: train a DMAE on a split.

Both stages run :func:`train_dmae`; they differ only by their parameters and by where the
initial weights come from (none for pretraining from scratch; the pretrain pipeline's checkpoint
or a released DMAE file for continued pretraining). The work is in ``dmae_pipeline.models`` and
``dmae_pipeline.training``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial, update_wrapper
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.io import safe_torch_load
from dmae_pipeline.models import DMAE, build_dmae, load_pretrained
from dmae_pipeline.reporting import reconstruction_figure
from dmae_pipeline.training import claim_run_dir, derive_seed, fit, state_digest, validate_cfg

logger = logging.getLogger(__name__)

PARAM_KEYS = frozenset({"init", "model", "augment", "train", "run_dir", "figure_images"})
REQUIRED_KEYS = ("model", "train", "run_dir")
FROM_SPEC = ("in_chans", "mean", "std")  # the dataset's, never the parameters'
PIPELINE_INIT = "pipeline"
# Seed streams of train.seed for the model's initial weights and the figure's noise and masks,
# apart from the training engine's streams.
MODEL_INIT_STREAM, FIGURE_STREAM = 100, 101


@contextmanager
def named(prefix: str) -> Iterator[None]:
    """Re-raise a ValueError with the name of the parameter it is about in front."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{prefix}: {e}") from e


def check_params(params: Mapping[str, Any] | None, stage: str) -> dict[str, Any]:
    """The stage's parameters with defaults filled in (init None, augment {}, figure_images 8)."""
    if not isinstance(params, Mapping):
        raise ValueError(
            f"{stage}: expected a mapping with keys {sorted(PARAM_KEYS)}, got {params!r} "
            f"(the {stage} pipeline is not configured in this environment)"
        )
    unknown = sorted(set(params) - PARAM_KEYS)
    if unknown:
        raise ValueError(
            f"{stage}: unknown keys {unknown}; expected keys among {sorted(PARAM_KEYS)}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in params]
    if missing:
        raise ValueError(f"{stage}: missing keys {missing}")
    settings = {"init": None, "augment": {}, "figure_images": 8, **params}
    for key in ("model", "augment", "train"):
        if not isinstance(settings[key], Mapping):
            raise ValueError(f"{stage}.{key}: expected a mapping, got {settings[key]!r}")
    k = settings["figure_images"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{stage}.figure_images: expected an integer >= 1, got {k!r}")
    if not isinstance(settings["run_dir"], str) or not settings["run_dir"]:
        raise ValueError(f"{stage}.run_dir: expected a folder path, got {settings['run_dir']!r}")
    return settings


def dmae_config(
    spec: Mapping[str, Any],
    model_params: Mapping[str, Any],
    init_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``build_dmae`` arguments: the init checkpoint's config (if it has one), overridden by the
    parameters, with the channel count and normalization of the dataset ``spec``."""
    clash = [k for k in FROM_SPEC if k in model_params]
    if clash:
        raise ValueError(
            f"{clash} come from the dataset spec (channels, mean, std); remove them from the "
            "parameters"
        )
    config = {
        **(init_config or {}),
        **model_params,
        "in_chans": int(spec["channels"]),
        "mean": list(spec["mean"]),
        "std": list(spec["std"]),
    }
    if "preset" not in config:
        raise ValueError(
            "preset is required (tiny, small, base or large) unless init is a checkpoint that "
            "holds its config"
        )
    return config


def read_init(
    init: Any, init_checkpoint: Mapping[str, Any] | None, stage: str
) -> tuple[Mapping[str, Any] | None, str]:
    """The initial weights named by the ``init`` parameter and a name for messages: None (from
    scratch), "pipeline" (``init_checkpoint``, the pretrain pipeline's output) or a file path."""
    if init is None:
        return None, "scratch"
    if init == PIPELINE_INIT:
        if init_checkpoint is None:
            raise FileNotFoundError(
                f"{stage}.init is '{PIPELINE_INIT}' but the pretrain pipeline's checkpoint "
                "(pretrained_model) does not exist: run the pretrain pipeline first, or set "
                f"{stage}.init to the path of a released DMAE file"
            )
        return init_checkpoint, "the pretrain pipeline's checkpoint"
    if not isinstance(init, str):
        raise ValueError(
            f"{stage}.init: expected null, '{PIPELINE_INIT}' or a checkpoint path, got {init!r}"
        )
    if not Path(init).is_file():
        raise FileNotFoundError(
            f"{stage}.init: {init} does not exist; expected a DMAE checkpoint (a released "
            f"pretrained file or a pipeline checkpoint), '{PIPELINE_INIT}' or null"
        )
    with named(f"{stage}.init"):
        state = safe_torch_load(init)
    if not isinstance(state, Mapping):
        raise ValueError(f"{stage}.init: {init} does not hold a state dict")
    return state, init


def init_config_of(state: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """A pipeline checkpoint's model config; None for released files, which carry none."""
    config = state.get("config") if state is not None else None
    return config if isinstance(config, Mapping) else None


def load_init(model: DMAE, state: Mapping[str, Any], source: str, stage: str) -> None:
    """Load the whole DMAE (encoder and decoder) from ``state``; a checkpoint of another width,
    depth or patch size, or one without a decoder, is refused."""
    with named(f"{stage}.init ({source})"):
        missing, _ = load_pretrained(model, state)
    if missing:
        raise ValueError(
            f"{stage}.init ({source}) lacks {len(missing)} of the DMAE's tensors, e.g. "
            f"{missing[:3]}: expected a pretrained DMAE checkpoint (encoder and decoder)"
        )


def dmae_loss(model: DMAE, batch: tuple, generator: torch.Generator) -> torch.Tensor:
    """The training engine's loss_fn: the DMAE's own reconstruction loss on the batch images."""
    return model(batch[0], generator=generator)[0]


def prepare_run(
    dataset_spec: Mapping[str, Any],
    train_split: Mapping[str, Any],
    settings: Mapping[str, Any],
    init_checkpoint: Mapping[str, Any] | None,
    stage: str,
) -> tuple[DMAE, dict[str, Any], SplitDataset]:
    """Everything checked and built before training: the DMAE (with its initial weights), the
    validated training settings and the augmented training set; the run folder is claimed."""
    with named(f"{stage}.train"):
        cfg = validate_cfg(settings["train"])
    init_state, source = read_init(settings["init"], init_checkpoint, stage)
    with named(f"{stage}.model"):
        config = dmae_config(dataset_spec, settings["model"], init_config_of(init_state))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg["seed"], MODEL_INIT_STREAM))
            model = build_dmae(**config)
    if init_state is not None:
        load_init(model, init_state, source, stage)
    with named(stage):
        transform = build_transform(dataset_spec, train=True, augment=settings["augment"])
    train_set = SplitDataset(train_split, transform)
    identity = {
        "model": model.config,
        "augment": settings["augment"],
        "dataset": {k: dataset_spec[k] for k in ("name", "image_size", "channels", "split_sizes")},
        "init": None if init_state is None else state_digest(init_state),
    }
    claim_run_dir(Path(settings["run_dir"]), identity, cfg["resume"], stage)
    logger.info(
        "%s: DMAE %s (%.2fM parameters, sigma %g, mask ratio %g) from %s on %d images",
        stage,
        model.config["preset"],
        sum(p.numel() for p in model.parameters()) / 1e6,
        model.sigma,
        model.mask_ratio,
        source,
        len(train_set),
    )
    return model, cfg, train_set


def train_dmae(
    dataset_spec: dict[str, Any],
    train_split: dict[str, Any],
    params: dict[str, Any],
    init_checkpoint: dict[str, Any] | None = None,
    *,
    stage: str,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], Figure]:
    """Train a DMAE on ``train_split`` with the parameters of ``stage`` (pretrain or
    cifar_pretrain), starting from the weights ``params["init"]`` names.

    Every parameter, the init checkpoint and the run folder are checked before training starts.
    Returns the pipeline checkpoint {"model", "config", "epoch"}, the released plain state dict
    and the reconstruction figure of the first ``figure_images`` training images.
    """
    settings = check_params(params, stage)
    model, cfg, train_set = prepare_run(dataset_spec, train_split, settings, init_checkpoint, stage)
    history = fit(
        model,
        train_set,
        loss_fn=dmae_loss,
        cfg=cfg,
        run_dir=settings["run_dir"],
        log_prefix=f"{stage}/",
    )["history"]
    logger.info(
        "%s: train_loss %.4f (epoch 1) -> %.4f (epoch %d)",
        stage,
        history[0]["train_loss"],
        history[-1]["train_loss"],
        history[-1]["epoch"],
    )

    shown = SplitDataset(train_split, build_transform(dataset_spec, train=False))
    images = torch.stack([shown[i][0] for i in range(min(settings["figure_images"], len(shown)))])
    generator = torch.Generator().manual_seed(derive_seed(cfg["seed"], FIGURE_STREAM))
    figure = reconstruction_figure(model, images, generator)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    checkpoint = {"model": state, "config": model.config, "epoch": history[-1]["epoch"]}
    return checkpoint, state, figure


def stage_node(stage: str) -> Callable[..., tuple[dict[str, Any], dict[str, torch.Tensor], Figure]]:
    """:func:`train_dmae` for one stage, keeping its name for Kedro's logs and viz."""
    return update_wrapper(partial(train_dmae, stage=stage), train_dmae)
