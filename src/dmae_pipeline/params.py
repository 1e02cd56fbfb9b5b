"""The parameter blocks of conf/, one typed model each: the one place where parameters are checked.

Each node types its ``params:<block>`` input with the block's model, so Kedro validates every
block of a run's pipelines when it builds the catalog, before the first node starts. A rule across
fields raises pydantic's error at the field it names; every error reads ``<dotted key>: <what is
allowed>, got <value>``. :func:`check_run` (``hooks.ParamsHook``) adds what one block cannot know:
unknown blocks, and combinations across blocks and with the data.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NoReturn

from kedro.validation.exceptions import ModelInstantiationError
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from dmae_pipeline.data import SourceName
from dmae_pipeline.models import (
    PRESETS,
    LossOn,
    architecture_problems,
    classifier_config,
    dmae_config,
    encoder_config,
)
from dmae_pipeline.reporting.names import RADIUS_UNIT, grid_units
from dmae_pipeline.training import Amp, Device, TrainConfig, peak_lr, split_batch

OpenUnit = Annotated[float, Field(gt=0, lt=1)]  # (0, 1)
Fraction = Annotated[float, Field(ge=0, lt=1)]  # [0, 1)
UnitFloat = Annotated[float, Field(gt=0, le=1)]  # (0, 1]

SCRATCH = "scratch"
"""``init: scratch``: random initial weights."""


class ParamsError(ModelInstantiationError):
    """Parameters that do not validate; one line per problem, each naming its dotted key."""


def _error(key: str, message: str, value: Any) -> InitErrorDetails:
    """Pydantic's error at ``key`` (dotted, relative to the model being validated)."""
    return InitErrorDetails(
        type=PydanticCustomError("invalid", message), loc=tuple(key.split(".")), input=value
    )


def _refuse(key: str, message: str, value: Any) -> NoReturn:
    """Refuse ``value`` at ``key`` from a model validator, as if its field had refused it."""
    raise ValidationError.from_exception_data("parameters", [_error(key, message, value)])


def _increasing(radii: list[float]) -> list[float]:
    if any(a >= b for a, b in pairwise(radii)):
        raise PydanticCustomError("increasing", "expected increasing radii")
    return radii


Radii = Annotated[list[NonNegativeFloat], Field(min_length=1), AfterValidator(_increasing)]


class Params(BaseModel):
    """A block (or part of one) of parameters: exact types, no unknown keys, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    block: ClassVar[str] = ""
    """The top-level key this model validates (for messages)."""

    @model_validator(mode="wrap")
    @classmethod
    def _name_allowed_keys(cls, data: Any, handler: ModelWrapValidatorHandler) -> Any:
        """Pydantic's refusal of an unknown key here, naming the keys allowed here."""
        try:
            return handler(data)
        except ValidationError as e:
            allowed = f"unknown key; allowed here: {', '.join(cls.model_fields)}"
            errors = [
                _error(str(error["loc"][0]), allowed, error["input"])
                if error["type"] == "extra_forbidden" and len(error["loc"]) == 1
                else InitErrorDetails(
                    type=PydanticCustomError(error["type"], error["msg"]),
                    loc=error["loc"],
                    input=error["input"],
                )
                for error in e.errors()
            ]
            raise ValidationError.from_exception_data("parameters", errors) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Params:
        """Validate, raising a :class:`ParamsError` with one line per error."""
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as e:
            raise ParamsError("\n".join(_line(cls.block, error) for error in e.errors())) from None


def _line(block: str, error: Any) -> str:
    """``<dotted key>: <pydantic's message>, got <value>`` (no value for a missing key)."""
    key = ".".join(str(part) for part in (block, *error["loc"]) if part != "")
    got = "" if error["type"] == "missing" else f", got {error['input']!r}"
    return f"{key}: {error['msg']}{got}"


# --- data_prep ---------------------------------------------------------------------------------


class DataPrepParams(Params):
    """``data_prep``: which source to read and how to split it (see ``data.prepare``)."""

    block: ClassVar[str] = "data_prep"
    ONLY_FOR: ClassVar[dict[str, tuple[str, ...]]] = {
        "test_fraction": ("digits",),
        "raw_dir": ("cifar10", "imagefolder"),
        "download": ("cifar10",),
        "url": ("cifar10",),
        "md5": ("cifar10",),
    }

    source: SourceName
    image_size: PositiveInt
    name: str | None = None
    val_fraction: OpenUnit = 0.1
    test_fraction: OpenUnit | None = None
    seed: NonNegativeInt = 0
    raw_dir: str | None = None
    download: bool | None = None
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    md5: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{32}$")] | None = None

    @model_validator(mode="after")
    def _per_source(self) -> DataPrepParams:
        for key, sources in self.ONLY_FOR.items():
            if getattr(self, key) is not None and self.source not in sources:
                _refuse(
                    key,
                    f"applies only to source {' or '.join(sources)}, not {self.source}; remove "
                    "it or set it to null",
                    getattr(self, key),
                )
        if self.source == "cifar10" and self.image_size != 32:
            _refuse("image_size", "CIFAR-10 images are 32x32", self.image_size)
        if self.source == "digits" and self.test_fraction is None:
            message = "needed for digits, which have no test split of their own"
            _refuse("test_fraction", message, None)
        held_out = self.val_fraction + (self.test_fraction or 0)
        if held_out >= 1:
            _refuse(
                "val_fraction",
                f"val_fraction + test_fraction = {held_out:g} leaves no training data; their sum "
                "must be below 1",
                self.val_fraction,
            )
        return self

    def prepare_args(self) -> dict[str, Any]:
        """The keyword arguments of ``data.prepare`` (the source's defaults where unset)."""
        return self.model_dump(exclude_none=True)


# --- models -------------------------------------------------------------------------------------


class EncoderParams(Params):
    """Overrides of the model preset (and of the init checkpoint's config); unset keys keep it.
    Channels, mean and std come from the dataset spec."""

    preset: str | None = None
    img_size: PositiveInt | None = None
    patch_size: PositiveInt | None = None
    embed_dim: PositiveInt | None = None
    depth: PositiveInt | None = None
    num_heads: PositiveInt | None = None
    mlp_ratio: PositiveFloat | None = None

    @model_validator(mode="after")
    def _known_preset(self) -> EncoderParams:
        if self.preset is not None and self.preset not in PRESETS:
            _refuse("preset", f"expected one of {', '.join(PRESETS)}", self.preset)
        return self

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class DmaeParams(EncoderParams):
    decoder_embed_dim: PositiveInt | None = None
    decoder_depth: PositiveInt | None = None
    decoder_num_heads: PositiveInt | None = None
    sigma: NonNegativeFloat | None = None
    mask_ratio: Fraction | None = None
    norm_pix_loss: bool | None = None
    loss_on: LossOn | None = None


class ClassifierParams(EncoderParams):
    drop_path_rate: Fraction | None = None


# --- training -----------------------------------------------------------------------------------


class TrainParams(TrainConfig, Params):
    """``<stage>.train``: the training engine's settings (``training.TrainConfig``), read from
    conf/: exact types, and a schedule that warms up within the run and decays to at most its
    peak."""

    @model_validator(mode="after")
    def _schedule(self) -> TrainParams:
        if self.warmup_epochs >= self.epochs:
            _refuse(
                "warmup_epochs",
                f"must be below epochs ({self.epochs}), else the warmup takes the whole run",
                self.warmup_epochs,
            )
        peak = peak_lr(self.blr, self.batch_size, self.accum_iter)
        if self.min_lr > peak:
            _refuse(
                "min_lr",
                f"must be at most the peak lr blr * batch_size * accum_iter / 256 = {peak:.3g}",
                self.min_lr,
            )
        return self


class AugmentParams(Params):
    """Training augmentation (``data.build_transform``)."""

    class Crop(Params):
        scale: Annotated[list[UnitFloat], Field(min_length=2, max_length=2)]

        @model_validator(mode="after")
        def _ordered(self) -> AugmentParams.Crop:
            if self.scale[0] > self.scale[1]:
                _refuse("scale", "expected [lo, hi] with lo <= hi", self.scale)
            return self

    hflip: bool = False
    random_resized_crop: Crop | None = None
    # timm skips a section without a number silently: a typo must not pass
    rand_augment: Annotated[str, Field(pattern=r"^rand(-(t.*|[a-z]+\d[\d.]*))*$")] | None = None

    def transform_args(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


# --- the training stages -----------------------------------------------------------------------


class StageParams(Params):
    """What every training stage has: where it starts from, its data augmentation, its engine
    settings and its run folder (resumable state)."""

    INIT_FROM: ClassVar[tuple[str, ...]] = ()
    """The pipelines whose checkpoint ``init`` may name."""

    init: Annotated[str, Field(min_length=1)] = SCRATCH
    augment: AugmentParams = AugmentParams()
    train: TrainParams
    run_dir: Annotated[str, Field(min_length=1)]

    @model_validator(mode="after")
    def _architecture_given(self) -> StageParams:
        if self.init == SCRATCH and self.model.preset is None:
            _refuse("model.preset", "needed with init scratch, which brings no model config", None)
        return self

    def overrides_on(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """``model``'s overrides on ``base`` (the init checkpoint's model config, or {})."""
        merged = {**base, **self.model.overrides()}
        if "preset" not in merged:
            raise ParamsError(
                f"{self.block}.model.preset: needed, since init {self.init} holds no model config "
                "(a released file): give preset and the sizes that differ from it"
            )
        return merged

    @property
    def init_file(self) -> Path | None:
        """The checkpoint file ``init`` names, None for scratch or a pipeline's checkpoint."""
        return None if self.init in (SCRATCH, *self.INIT_FROM) else Path(self.init)


class PretrainParams(StageParams):
    """``pretrain``: DMAE pretraining."""

    block: ClassVar[str] = "pretrain"
    model: DmaeParams
    figure_images: PositiveInt = 8

    def architecture(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """``build_dmae`` arguments: ``base`` (the init checkpoint's config, or {} from scratch)
        under ``model``'s overrides."""
        return dmae_config(**self.overrides_on(base))


class CifarPretrainParams(PretrainParams):
    """``cifar_pretrain``: continued DMAE pretraining on the downstream data."""

    block: ClassVar[str] = "cifar_pretrain"
    INIT_FROM: ClassVar[tuple[str, ...]] = ("pretrain",)
    init: str = "pretrain"


class ConsistencyParams(Params):
    """Consistency regularization (Jeong & Shin 2020); ``enabled: false`` is plain noise
    augmentation."""

    enabled: bool
    m: PositiveInt = 2
    lam: NonNegativeFloat = 0.0
    eta: NonNegativeFloat | list[NonNegativeFloat] = 0.0


class EvalParams(Params):
    batch_size: PositiveInt
    seed: NonNegativeInt = 0


class FinetuneParams(StageParams):
    """``finetune``: one noise-augmented classifier per sigma."""

    block: ClassVar[str] = "finetune"
    INIT_FROM: ClassVar[tuple[str, ...]] = ("cifar_pretrain", "pretrain")
    sigmas: Annotated[list[PositiveFloat], Field(min_length=1)]
    model: ClassifierParams = ClassifierParams()
    consistency: ConsistencyParams
    layer_decay: UnitFloat = 1.0
    label_smoothing: Fraction = 0.0
    mixup: NonNegativeFloat = 0.0
    cutmix: NonNegativeFloat = 0.0
    eval: EvalParams

    @model_validator(mode="after")
    def _per_sigma(self) -> FinetuneParams:
        if len(set(self.sigmas)) != len(self.sigmas):
            _refuse("sigmas", "expected distinct noise levels", self.sigmas)
        eta = self.consistency.eta
        if isinstance(eta, list) and len(eta) != len(self.sigmas):
            _refuse(
                "consistency.eta",
                f"expected one number, or one per sigma ({len(self.sigmas)})",
                eta,
            )
        return self

    def architecture(self, base: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
        """``build_classifier`` arguments: the encoder of ``base`` (the init checkpoint's config,
        or {} from scratch) under ``model``'s overrides."""
        return classifier_config(num_classes=num_classes, **self.overrides_on(encoder_config(base)))

    def losses(self) -> list[dict[str, Any]]:
        """Per sigma, the arguments of ``training.noisy_classification_loss``."""
        c = self.consistency
        etas = c.eta if isinstance(c.eta, list) else [c.eta] * len(self.sigmas)
        return [
            {
                "sigma": sigma,
                "m": c.m if c.enabled else 1,
                "lam": c.lam if c.enabled else 0.0,
                "eta": eta if c.enabled else 0.0,
                "label_smoothing": self.label_smoothing,
                "mixup": self.mixup,
                "cutmix": self.cutmix,
            }
            for sigma, eta in zip(self.sigmas, etas, strict=True)
        ]


# --- certify and report -------------------------------------------------------------------------


class CertifyParams(Params):
    """``certify``: Cohen et al.'s CERTIFY of the selected test images (``smoothing``): fixed-n, or
    sequential with at most ``n`` estimation samples, settling the certificates at
    ``report.radii``; ``amp`` is the model's autocast precision, as ``train.amp``."""

    block: ClassVar[str] = "certify"
    n0: PositiveInt
    n: PositiveInt
    alpha: OpenUnit
    batch_size: PositiveInt
    mode: Literal["fixed", "sequential"] = "fixed"
    stop_at_selection: bool = False
    skip: PositiveInt = 1
    max_images: PositiveInt | None = None
    shard_index: NonNegativeInt = 0
    num_shards: PositiveInt = 1
    seed: NonNegativeInt = 0
    log_dir: Annotated[str, Field(min_length=1)]
    device: Device = "auto"
    amp: Amp = "auto"
    compile: bool = False

    @model_validator(mode="after")
    def _shard(self) -> CertifyParams:
        if self.shard_index >= self.num_shards:
            _refuse(
                "shard_index", f"expected below num_shards ({self.num_shards})", self.shard_index
            )
        if self.mode != "sequential" and self.stop_at_selection:
            _refuse(
                "stop_at_selection",
                "applies to mode sequential only; set it to false or mode to sequential",
                self.stop_at_selection,
            )
        return self


class PublishParams(Params):
    """``publish``: the certified models as MLflow models (``serving``): what one request may ask
    for and where the served model runs; its defaults are the certify settings."""

    block: ClassVar[str] = "publish"
    max_n: PositiveInt
    max_images: PositiveInt
    device: Device = "auto"
    amp: Amp = "auto"


class PredictParams(Params):
    """``predict``: the smoothed classifiers' answers for the images at ``input`` (a folder of
    PNG/JPEG images or an .npy array; ``serving.batch``) from the models of ``sigmas`` (None: every
    sigma of ``finetune.sigmas``); each certification setting left None is certify's (and a
    sequential run's ``radii``, ``report.radii``)."""

    block: ClassVar[str] = "predict"
    input: Annotated[str, Field(min_length=1)] | None = None
    sigmas: Annotated[list[PositiveFloat], Field(min_length=1)] | None = None
    mode: Literal["fixed", "sequential"] | None = None
    n0: PositiveInt | None = None
    n: PositiveInt | None = None
    alpha: OpenUnit | None = None
    batch_size: PositiveInt | None = None
    seed: NonNegativeInt | None = None
    radii: Radii | None = None
    device: Device | None = None
    amp: Amp | None = None
    log_dir: Annotated[str, Field(min_length=1)]


class ReferencePoint(Params):
    label: Annotated[str, Field(min_length=1)]
    radii: Annotated[list[NonNegativeFloat], Field(min_length=1)]
    certified_accuracy: list[Annotated[float, Field(ge=0, le=1)]]

    @model_validator(mode="after")
    def _paired(self) -> ReferencePoint:
        if len(self.radii) != len(self.certified_accuracy):
            _refuse(
                "certified_accuracy",
                "expected one certified accuracy (a fraction in [0, 1]) per radius",
                self.certified_accuracy,
            )
        return self


class ReportParams(Params):
    """``report``: the radii of the tables and those of them in the summary metrics, the curves'
    grid, published reference points, and the intervals over the test images (their level; ACR's
    bootstrap resamples and seed)."""

    block: ClassVar[str] = "report"
    dataset: Annotated[str, Field(min_length=1)]
    radii: Radii
    summary_radii: Radii
    curve_step: PositiveFloat = RADIUS_UNIT
    reference_points: list[ReferencePoint] = []
    confidence: OpenUnit = 0.95
    bootstrap: PositiveInt = 2000
    bootstrap_seed: NonNegativeInt = 0

    @model_validator(mode="after")
    def _grid(self) -> ReportParams:
        try:
            grid_units(self.curve_step)
        except ValueError:
            _refuse("curve_step", f"expected a positive multiple of {RADIUS_UNIT}", self.curve_step)
        if not set(self.summary_radii) <= set(self.radii):
            _refuse(
                "summary_radii", f"expected radii of report.radii {self.radii}", self.summary_radii
            )
        return self


# --- the scratch / MAE / DMAE comparison --------------------------------------------------------


class Variant(Params):
    """One variant of the comparison: where finetuning starts (``finetune.init``) and, for a
    pretrained one, the pretraining's noise and loss (``pretrain.model.sigma``, ``.loss_on``)."""

    init: Literal["scratch", "pretrain"]
    sigma: NonNegativeFloat | None = None
    loss_on: LossOn | None = None

    @model_validator(mode="after")
    def _pretraining(self) -> Variant:
        pretrained = self.init != SCRATCH
        if not pretrained == (self.sigma is not None) == (self.loss_on is not None):
            _refuse(
                "sigma, loss_on",
                f"expected both with init pretrain and neither with init scratch (init "
                f"{self.init})",
                [self.sigma, self.loss_on],
            )
        return self


class CompareParams(Params):
    """``compare`` (conf/compare): the variants of the comparison, the one a run trains
    (``variant``, ``seed``), and how the comparison report sets them against each other."""

    block: ClassVar[str] = "compare"
    variant: str
    seed: NonNegativeInt
    variants: Annotated[dict[str, Variant], Field(min_length=2)]
    seeds: Annotated[list[NonNegativeInt], Field(min_length=1)]
    gaps: list[Annotated[list[str], Field(min_length=2, max_length=2)]]
    radii: Radii
    bootstrap: PositiveInt = 2000
    confidence: OpenUnit = 0.95
    bootstrap_seed: NonNegativeInt = 0

    @model_validator(mode="after")
    def _known(self) -> CompareParams:
        names = ", ".join(self.variants)
        if self.variant not in self.variants:
            _refuse("variant", f"expected one of {names}", self.variant)
        if len(set(self.seeds)) != len(self.seeds):
            _refuse("seeds", "expected distinct seeds", self.seeds)
        unknown = sorted({v for pair in self.gaps for v in pair} - set(self.variants))
        if unknown:
            _refuse("gaps", f"expected pairs of {names}", unknown)
        if any(a == b for a, b in self.gaps):
            _refuse("gaps", "expected two different variants per pair", self.gaps)
        return self


BLOCKS: dict[str, type[Params]] = {
    model.block: model
    for model in (
        DataPrepParams,
        PretrainParams,
        CifarPretrainParams,
        FinetuneParams,
        CertifyParams,
        ReportParams,
        PublishParams,
        PredictParams,
        CompareParams,
    )
}
"""Every parameter block conf/ may hold, by top-level key."""


# --- the dataset spec ---------------------------------------------------------------------------


class DatasetSpec(Params):
    """What data_prep writes to dataset_spec.json, and every later stage reads."""

    name: str
    source: SourceName
    num_classes: Annotated[int, Field(ge=2)]
    class_names: list[str]
    image_size: PositiveInt
    channels: PositiveInt
    mean: list[float]
    std: list[PositiveFloat]
    split_sizes: dict[Literal["train", "val", "test"], NonNegativeInt]
    split_digests: dict[Literal["train", "val", "test"], str]
    """``data.split_digest`` of each split: what a checkpoint's provenance records."""

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        if len(self.class_names) != self.num_classes:
            _refuse("class_names", "expected one per class", self.class_names)
        if not len(self.mean) == len(self.std) == self.channels:
            _refuse("mean, std", "expected one value per channel", [self.mean, self.std])
        if set(self.split_sizes) != {"train", "val", "test"}:
            _refuse("split_sizes", "expected the sizes of train, val and test", self.split_sizes)
        if set(self.split_digests) != {"train", "val", "test"}:
            _refuse(
                "split_digests", "expected the digests of train, val and test", self.split_digests
            )
        return self


def check_dataset_spec(spec: Any) -> None:
    """The catalog's validator of ``dataset_spec`` (on load): refuse a file that is no spec."""
    try:
        DatasetSpec.model_validate(spec)
    except ParamsError as e:
        lines = str(e).replace("\n", "; ")
        raise ValueError(
            f"dataset_spec.json is not a dataset spec ({lines}); run the data_prep pipeline to "
            "write it again"
        ) from None


# --- the run as a whole -------------------------------------------------------------------------


def check_run(
    parameters: Mapping[str, Any],
    used: Collection[str],
    data: Mapping[str, Any] | None,
    world_size: int,
) -> None:
    """Refuse, with every problem at once, what no single block can see.

    :param parameters: every block of the run's config (models for the blocks Kedro validated)
    :param used: the blocks the run's nodes read, whole or in part
    :param data: ``{"split_sizes": {"train", "val", "test"}, "num_classes"}`` of the data the run
                 trains on, as far as known before it starts (None: unknown)
    :param world_size: the number of processes of the launch (torchrun's WORLD_SIZE)
    """
    problems = [
        f"{name}: unknown parameter block; the blocks are {', '.join(BLOCKS)}"
        for name in parameters
        if name not in BLOCKS
    ]
    if not problems:
        # Kedro validates the blocks nodes read whole; this, those read in part (finetune.sigmas)
        blocks = {name: BLOCKS[name].model_validate(parameters[name]) for name in used}
        problems = list(_combinations(blocks, data or {}, world_size))
    if problems:
        raise ParamsError("Parameter validation failed:\n- " + "\n- ".join(problems))


def _combinations(
    blocks: Mapping[str, Params], data: Mapping[str, Any], world_size: int
) -> Iterator[str]:
    sizes = data.get("split_sizes") or {}
    architectures: dict[str, dict[str, Any]] = {}  # of the stages this run trains
    for name in ("pretrain", "cifar_pretrain", "finetune"):
        stage = blocks.get(name)
        if stage is None:
            continue
        if stage.init_file is not None and not stage.init_file.is_file():
            yield (
                f"{name}.init: {stage.init} does not exist; expected "
                f"{', '.join((SCRATCH, *stage.INIT_FROM))} or the path of a checkpoint file"
            )
        base = {} if stage.init == SCRATCH else architectures.get(stage.init)
        if base is not None:  # else the checkpoint decides, and the node checks it
            if name == "finetune":
                config = stage.architecture(base, data.get("num_classes") or 2)
            else:
                config = architectures[name] = stage.architecture(base)
            yield from (f"{name}.model: {p}" for p in architecture_problems(config))
        yield from _batch_problems(stage, sizes.get("train"), world_size)
    certify, publish = blocks.get("certify"), blocks.get("publish")
    if certify is not None and publish is not None:
        for key in ("n0", "n"):
            if getattr(certify, key) > publish.max_n:
                yield (
                    f"certify.{key}: {getattr(certify, key)} exceeds publish.max_n "
                    f"({publish.max_n}), so the published models would refuse their own defaults"
                )
    predict = blocks.get("predict")
    if predict is not None and predict.input is None:
        yield (
            "predict.input: expected a folder of PNG/JPEG images or an .npy file of images, "
            "got None; name it: kedro run --pipelines=predict --params=predict.input=PATH"
        )
    if certify is not None and sizes.get("test"):
        selected = len(range(0, sizes["test"], certify.skip)[: certify.max_images])
        if certify.num_shards > selected:
            yield (
                f"certify.num_shards: {certify.num_shards} shards exceed the {selected} selected "
                "test images"
            )


def _batch_problems(stage: StageParams, train_size: int | None, world_size: int) -> Iterator[str]:
    train, name = stage.train, stage.block
    try:
        micro_batch, _ = split_batch(train.batch_size, train.accum_iter, world_size)
    except ValueError as e:
        yield f"{name}.train: {e}"
        return
    if train_size is not None and train.effective_batch > train_size:
        yield (
            f"{name}.train: batch_size * accum_iter = {train.effective_batch} exceeds the "
            f"{train_size} training images"
        )
    if isinstance(stage, FinetuneParams) and (stage.mixup or stage.cutmix):
        copies = micro_batch * stage.losses()[0]["m"]
        if copies % 2:
            yield (
                f"{name}.train.batch_size: mixup and cutmix pair the images of a forward pass, "
                f"so it needs an even number of noisy copies per process, got {copies}"
            )
