"""The typed parameter blocks: every env resolves to the paper's settings, bad values are refused
with their dotted key, and the run-wide checks see across blocks and the data."""

from __future__ import annotations

import copy

import pytest

from conftest import env_parameters
from dmae_pipeline.data import cifar10, expected_spec
from dmae_pipeline.models import build_classifier, build_dmae, check_architecture, encoder_config
from dmae_pipeline.params import BLOCKS, DatasetSpec, ParamsError, check_dataset_spec, check_run

ENVS = ("base", "test", "cifar10", "imagenet")


load = env_parameters


def validate_blocks(parameters: dict) -> dict:
    """Each block as its typed model (a null block stays None)."""
    return {
        name: None if value is None else BLOCKS[name].model_validate(value)
        for name, value in parameters.items()
    }


def validated(env: str) -> dict:
    return validate_blocks(load(env))


@pytest.mark.parametrize("env", ENVS)
def test_every_env_validates_block_by_block(env):
    blocks = validated(env)
    # every registered pipeline's block, compare's too (kedro viz reads them on any env)
    assert set(blocks) == set(BLOCKS)
    assert blocks["cifar_pretrain"] is None if env == "imagenet" else blocks["cifar_pretrain"]


def test_imagenet_env_is_the_papers_recipe():
    p = validated("imagenet")
    pretrain, finetune, certify = p["pretrain"], p["finetune"], p["certify"]
    assert pretrain.model.preset == "base" and pretrain.init == "scratch"
    dmae = pretrain.architecture({})
    assert (dmae["img_size"], dmae["patch_size"], dmae["embed_dim"], dmae["depth"]) == (
        224,
        16,
        768,
        12,
    )
    assert (dmae["decoder_embed_dim"], dmae["decoder_depth"], dmae["decoder_num_heads"]) == (
        512,
        8,
        16,
    )
    assert (dmae["sigma"], dmae["mask_ratio"], dmae["norm_pix_loss"], dmae["loss_on"]) == (
        0.25, 0.75, True, "all"
    )  # fmt: skip
    t = pretrain.train
    assert (t.epochs, t.warmup_epochs, t.blr, t.effective_batch) == (1100, 40, 1.5e-4, 4096)
    assert (t.weight_decay, t.betas, t.min_lr) == (0.05, [0.9, 0.95], 0.0)
    assert pretrain.augment.random_resized_crop.scale == [0.2, 1.0] and pretrain.augment.hflip
    assert finetune.init == "pretrain" and finetune.sigmas == [0.25, 0.5, 1.0]
    c = finetune.consistency
    assert (c.enabled, c.m, c.lam, c.eta) == (True, 2, 2.0, [0.5, 0.5, 0.1])
    t = finetune.train
    assert (t.epochs, t.warmup_epochs, t.blr, t.effective_batch, t.min_lr) == (
        100, 5, 5e-4, 1024, 1e-6
    )  # fmt: skip
    assert (finetune.layer_decay, t.weight_decay, finetune.model.drop_path_rate) == (
        0.65,
        0.05,
        0.1,
    )
    assert (finetune.mixup, finetune.cutmix, finetune.label_smoothing) == (0.8, 1.0, 0.1)
    assert finetune.augment.rand_augment == "rand-m9-mstd0.5-inc1"
    assert (certify.n0, certify.n, certify.alpha, certify.skip) == (100, 10_000, 0.001, 50)
    assert p["data_prep"].source == "imagefolder" and p["data_prep"].image_size == 224


def test_cifar10_env_is_the_papers_recipe():
    p = validated("cifar10")
    cont, finetune, certify = p["cifar_pretrain"], p["finetune"], p["certify"]
    assert cont.init.endswith("dmae_base_sigma_0.25_mask_0.75_1100e.pth")
    dmae = cont.architecture({})
    assert (dmae["preset"], dmae["img_size"], dmae["sigma"], dmae["mask_ratio"]) == (
        "base", 224, 0.25, 0.75
    )  # fmt: skip
    t = cont.train
    assert (t.epochs, t.warmup_epochs, t.blr, t.effective_batch, t.weight_decay) == (
        50, 10, 5e-5, 512, 0.05
    )  # fmt: skip
    assert cont.augment.hflip and cont.augment.random_resized_crop is None
    t = finetune.train
    assert finetune.init == "cifar_pretrain"
    assert (t.epochs, t.blr, t.effective_batch, finetune.layer_decay) == (50, 5e-4, 256, 0.65)
    assert (finetune.model.drop_path_rate, finetune.label_smoothing) == (0.1, 0.1)
    assert (finetune.mixup, finetune.cutmix) == (0.0, 0.0)
    assert finetune.augment.hflip and finetune.augment.rand_augment is None
    assert (certify.n0, certify.n, certify.alpha, certify.skip) == (100, 100_000, 0.001, 1)
    assert certify.max_images is None
    data = p["data_prep"]
    assert (data.source, data.image_size, data.test_fraction) == ("cifar10", 32, None)
    assert expected_spec(data.source, data.val_fraction, data.test_fraction) == {
        "num_classes": 10, "split_sizes": {"train": 45_000, "val": 5_000, "test": 10_000}
    }  # fmt: skip
    assert cifar10.MEAN == (0.4914, 0.4822, 0.4465) and cifar10.STD == (0.2471, 0.2435, 0.2616)


@pytest.mark.parametrize("env", ["cifar10", "imagenet"])
def test_paper_envs_build_the_vit_b_models(env):
    p = validated(env)
    stage = p["cifar_pretrain"] if env == "cifar10" else p["pretrain"]
    channels = {"in_chans": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
    dmae = build_dmae(**stage.architecture(channels))
    encoder = sum(p.numel() for n, p in dmae.named_parameters() if not n.startswith("decoder"))
    assert 85e6 < encoder < 88e6  # ViT-B/16: the paper's 87M
    classifier = build_classifier(**p["finetune"].architecture(dmae.config, 10))
    assert classifier.config == {**encoder_config(dmae.config), **classifier.config}
    assert classifier.config["drop_path_rate"] == 0.1 and classifier.config["num_classes"] == 10


def test_test_env_holds_only_its_changes():
    """Env files are overlays: a key they leave out keeps its base value."""
    base, test = load("base"), load("test")
    assert test["pretrain"]["model"]["sigma"] == base["pretrain"]["model"]["sigma"] == 0.25
    assert test["pretrain"]["model"]["preset"] == "pico"
    assert test["finetune"]["consistency"]["lam"] == base["finetune"]["consistency"]["lam"]
    assert test["finetune"]["run_dir"] == base["finetune"]["run_dir"] == "data/06_models/finetune"


def with_change(block: str, path: str, value, params: dict | None = None) -> dict:
    """The test env's ``block`` (or ``params``) with ``path`` set to ``value`` (or deleted)."""
    params = copy.deepcopy(load("test")[block] if params is None else params)
    *parents, key = path.split(".")
    target = params
    for parent in parents:
        target = target[parent]
    if value is DELETE:
        del target[key]
    else:
        target[key] = value
    return params


DELETE = object()
BAD = [
    ("certify", "n", 0, "certify.n: Input should be greater than 0, got 0"),
    ("certify", "n0", True, "certify.n0: Input should be a valid integer, got True"),
    ("certify", "alpha", 1.0, "certify.alpha: Input should be less than 1, got 1.0"),
    ("certify", "shard_index", 3, "certify.shard_index: expected below num_shards (1), got 3"),
    ("certify", "device", "gpu", "certify.device: String should match pattern"),
    ("certify", "amp", "fp8", "certify.amp: Input should be 'auto', 'bf16', 'fp16'"),
    ("certify", "nn", 5, "certify.nn: unknown key; allowed here: n0, n, alpha"),
    ("certify", "log_dir", DELETE, "certify.log_dir: Field required"),
    ("finetune", "train.blr", -1.0, "finetune.train.blr: Input should be greater than 0, got -1.0"),
    ("finetune", "train.bl", 1.0, "finetune.train.bl: unknown key; allowed here: epochs, warmup"),
    ("finetune", "train.betas", [0.9], "finetune.train.betas: List should have at least 2 items"),
    ("finetune", "train.warmup_epochs", 2, "finetune.train.warmup_epochs: must be below epochs"),
    ("finetune", "train.min_lr", 1.0, "finetune.train.min_lr: must be at most the peak lr"),
    ("finetune", "train.amp", "fp32", "finetune.train.amp: Input should be 'auto'"),
    ("finetune", "sigmas", [0.25, 0.25], "finetune.sigmas: expected distinct noise levels"),
    ("finetune", "sigmas", [], "finetune.sigmas: List should have at least 1 item"),
    ("finetune", "consistency.eta", [0.5], "finetune.consistency.eta: expected one number, or"),
    ("finetune", "consistency.m", 0, "finetune.consistency.m: Input should be greater than 0"),
    ("finetune", "layer_decay", 0.0, "finetune.layer_decay: Input should be greater than 0"),
    ("finetune", "label_smoothing", 1.0, "finetune.label_smoothing: Input should be less than 1"),
    ("finetune", "model.in_chans", 3, "finetune.model.in_chans: unknown key; allowed here: pres"),
    ("finetune", "augment.rand_augment", "rand-m9-foo", "finetune.augment.rand_augment: String"),
    ("finetune", "augment.rand_augment", "m9", "finetune.augment.rand_augment: String should"),
    ("finetune", "augment.flip", True, "finetune.augment.flip: unknown key; allowed here: hflip"),
    ("finetune", "augment.hflip", "yes", "finetune.augment.hflip: Input should be a valid boolean"),
    ("finetune", "augment.random_resized_crop", {"scale": [0.2, 1.0], "ratio": 1},
     "finetune.augment.random_resized_crop.ratio: unknown key; allowed here: scale"),
    ("finetune", "augment.random_resized_crop", {"scale": [0.9, 0.1]},
     "finetune.augment.random_resized_crop.scale: expected [lo, hi] with lo <= hi"),
    ("pretrain", "model.preset", "huge", "pretrain.model.preset: expected one of pico, nano"),
    ("pretrain", "model.mask_ratio", 1.0, "pretrain.model.mask_ratio: Input should be less than 1"),
    ("pretrain", "model.loss_on", "visible", "pretrain.model.loss_on: Input should be 'all'"),
    ("pretrain", "model.preset", DELETE, "pretrain.model.preset: needed with init scratch"),
    ("pretrain", "figure_images", 0, "pretrain.figure_images: Input should be greater than 0"),
    ("data_prep", "source", "mnist", "data_prep.source: Input should be 'digits', 'cifar10'"),
    ("data_prep", "val_fraction", 0.9, "val_fraction + test_fraction = 1.1 leaves no"),
    ("data_prep", "raw_dir", "x", "data_prep.raw_dir: applies only to source cifar10 or imagefo"),
    ("data_prep", "test_fraction", None, "data_prep.test_fraction: needed for digits"),
    ("data_prep", "image_size", 16.0, "data_prep.image_size: Input should be a valid integer"),
    ("data_prep", "seed", "0", "data_prep.seed: Input should be a valid integer, got '0'"),
    ("data_prep", "val_fracton", 0.1, "data_prep.val_fracton: unknown key; allowed here: source"),
    ("data_prep", "md5", "c58f", "data_prep.md5: String should match pattern"),
    ("report", "radii", [0.5, 0.25], "report.radii: expected increasing radii"),
    ("report", "radii", [-0.5, 0.5], "report.radii.0: Input should be greater than or equal to 0"),
    ("report", "dataset", "", "report.dataset: String should have at least 1 character"),
    ("report", "reference_points", [{"label": "x", "radii": [0.5]}],
     "report.reference_points.0.certified_accuracy: Field required"),
    ("report", "curve_step", 0.015, "report.curve_step: expected a positive multiple of 0.01"),
    ("report", "reference_points", [{"label": "x", "radii": [0.5], "certified_accuracy": [50]}],
     "report.reference_points.0.certified_accuracy.0: Input should be less than or equal to 1"),
]  # fmt: skip
CIFAR = {"source": "cifar10", "image_size": 32, "raw_dir": "data/01_raw"}
BAD_CIFAR = [
    ("image_size", 64, "data_prep.image_size: CIFAR-10 images are 32x32, got 64"),
    ("test_fraction", 0.2, "data_prep.test_fraction: applies only to source digits, not cifar10"),
    ("download", "yes", "data_prep.download: Input should be a valid boolean"),
    ("url", "file:///etc/passwd", "data_prep.url: String should match pattern"),
]  # fmt: skip


@pytest.mark.parametrize(("block", "path", "value", "message"), BAD)
def test_bad_values_are_refused_with_their_dotted_key(block, path, value, message):
    with pytest.raises(ParamsError) as refused:
        BLOCKS[block].model_validate(with_change(block, path, value))
    assert message in str(refused.value)


@pytest.mark.parametrize(("path", "value", "message"), BAD_CIFAR)
def test_bad_cifar10_preparation_is_refused(path, value, message):
    BLOCKS["data_prep"].model_validate(CIFAR)
    with pytest.raises(ParamsError) as refused:
        BLOCKS["data_prep"].model_validate(with_change("data_prep", path, value, CIFAR))
    assert message in str(refused.value)


def run_checks(changes=(), used=("data_prep", "pretrain", "cifar_pretrain", "finetune", "certify"),
               world_size=1, extra=None):  # fmt: skip
    raw = load("test")
    for block, path, value in changes:
        raw[block] = with_change(block, path, value, raw[block]) if path else value
    parameters = {
        name: BLOCKS[name].model_validate(value) if name in BLOCKS and value else value
        for name, value in {**raw, **(extra or {})}.items()
    }
    prep = parameters["data_prep"]
    data = expected_spec(prep.source, prep.val_fraction, prep.test_fraction)
    check_run(parameters, set(used), data, world_size)


def test_the_test_env_passes_the_run_checks():
    run_checks()


RUN_PROBLEMS = [
    ({"extra": {"certfy": {"n": 5}}}, "certfy: unknown parameter block; the blocks are data_prep"),
    ({"changes": [("pretrain", "model.mask_ratio", 0.99)]},
     "pretrain.model: mask_ratio=0.99 leaves no visible patch of the 16 patches"),
    ({"changes": [("cifar_pretrain", "model.mask_ratio", 0.99)]},
     "cifar_pretrain.model: mask_ratio=0.99 leaves no visible patch of the 64 patches"),
    ({"changes": [("pretrain", "model.embed_dim", 30)]},
     "pretrain.model: embed_dim=30 must be divisible by 4"),
    ({"changes": [("finetune", "model.patch_size", 5)]},
     "finetune.model: patch_size=5 must divide img_size=32"),
    ({"changes": [("pretrain", "train.batch_size", 2000)]},
     "pretrain.train: batch_size * accum_iter = 4000 exceeds the 1258 training images"),
    ({"changes": [("finetune", "train.batch_size", 33), ("finetune", "train.accum_iter", 1),
                  ("finetune", "consistency.enabled", False)]},
     "finetune.train.batch_size: mixup and cutmix pair the images of a forward pass"),
    ({"changes": [("certify", "num_shards", 6), ("certify", "shard_index", 0)]},
     "certify.num_shards: 6 shards exceed the 5 selected test images"),
    ({"changes": [("finetune", "init", "no/such/file.pt")]},
     "finetune.init: no/such/file.pt does not exist; expected scratch, cifar_pretrain, pretrain"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "message"), RUN_PROBLEMS)
def test_run_checks_see_across_blocks_and_the_data(kwargs, message):
    with pytest.raises(ParamsError, match="Parameter validation failed") as refused:
        run_checks(**kwargs)
    assert message in str(refused.value)


def test_a_null_block_that_the_run_does_not_use_is_fine():
    # one that it uses is refused by Kedro's validation first (test_pretrain.BAD_PARAMS)
    run_checks(changes=[("cifar_pretrain", "", None)], used=("pretrain", "certify"))


def test_torchrun_world_sizes_that_cannot_split_the_batch_are_refused():
    run_checks(world_size=2)  # the test env's accum_iter 2 splits over 2 processes
    with pytest.raises(ParamsError, match=r"pretrain\.train: .* cannot be split evenly over 3"):
        run_checks(world_size=3)


def test_architecture_checks_name_the_block():
    config = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "num_heads": 2}
    check_architecture(config, "x.model")
    with pytest.raises(ValueError, match=r"x\.model: embed_dim=30 must be divisible"):
        check_architecture({**config, "embed_dim": 30}, "x.model")


SPEC = {
    "name": "digits", "source": "digits", "num_classes": 2, "class_names": ["0", "1"],
    "image_size": 8, "channels": 1, "mean": [0.5], "std": [0.2],
    "split_sizes": {"train": 5, "val": 1, "test": 1},
    "split_digests": {"train": "a1", "val": "b2", "test": "c3"},
}  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([], "Input should be a valid dictionary"),
        ({}, "name: Field required"),
        ({**SPEC, "channels": 3}, "mean, std: expected one value per channel"),
        ({**SPEC, "num_classes": 3}, "class_names: expected one per class"),
        ({**SPEC, "split_digests": {"train": "a1"}}, "split_digests: expected the digests of"),
    ],
)
def test_a_malformed_dataset_spec_names_the_file_and_what_is_wrong(spec, message):
    DatasetSpec.model_validate(SPEC)
    with pytest.raises(ValueError, match=r"dataset_spec\.json is not a dataset spec") as refused:
        check_dataset_spec(spec)
    assert message in str(refused.value)
