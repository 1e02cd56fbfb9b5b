"""conf/compare: the scratch / MAE / DMAE variants from configuration alone, equal in every other
setting, each run (variant, seed) writing into folders of its own."""

from __future__ import annotations

import pytest
from kedro.config import OmegaConfigLoader
from kedro.framework.project import configure_project

from conftest import PROJECT_ROOT, flat
from dmae_pipeline.data import expected_spec
from dmae_pipeline.params import BLOCKS, CompareParams, ParamsError, check_run
from dmae_pipeline.pipeline_registry import register_pipelines
from dmae_pipeline.settings import CONFIG_LOADER_ARGS
from test_params import validate_blocks

VARIANTS = ("scratch", "mae", "dmae")
# What a variant sets (compare.variants) and where its runs write; nothing else may differ.
VARIANT_KEYS = {
    "compare.variant",
    "pretrain.model.sigma",
    "pretrain.model.loss_on",
    "finetune.init",
}
SEED_KEYS = {"compare.seed", "pretrain.train.seed", "finetune.train.seed"}
FOLDERS = {"pretrain.run_dir", "finetune.run_dir", "certify.log_dir"}
PIPELINES = ("data_prep", "pretrain", "finetune", "certify", "report", "compare")


def loader(variant: str | None = None, seed: int | None = None) -> OmegaConfigLoader:
    """The compare env as ``kedro run --env=compare --params=compare.variant=..,compare.seed=..``
    loads it (without --params when both are None)."""
    chosen = {k: v for k, v in {"variant": variant, "seed": seed}.items() if v is not None}
    return OmegaConfigLoader(
        str(PROJECT_ROOT / "conf"),
        env="compare",
        runtime_params={"compare": chosen} if chosen else None,
        **CONFIG_LOADER_ARGS,
    )


def differences(a: dict, b: dict) -> set[str]:
    a, b = flat(a), flat(b)
    return {key for key in a.keys() | b.keys() if a.get(key) != b.get(key)}


def written_paths(catalog: dict) -> set[str]:
    """Every file or folder that the catalog names for an output of a comparison's run."""
    pipelines = register_pipelines()
    outputs = set().union(*(pipelines[name].all_outputs() for name in PIPELINES))
    return {
        value
        for name in outputs & catalog.keys()
        for key, value in flat(catalog[name]).items()
        if key.split(".")[-1] in ("filepath", "path")
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_validates_and_passes_the_run_checks(variant):
    parameters = loader(variant, 1)["parameters"]
    blocks = validate_blocks(parameters)
    assert set(blocks) == set(BLOCKS) and blocks["cifar_pretrain"] is None
    assert (blocks["compare"].variant, blocks["compare"].seed) == (variant, 1)
    prep = blocks["data_prep"]
    used = {"data_prep", "finetune", "certify", "report"} | (
        set() if variant == "scratch" else {"pretrain"}
    )
    check_run(blocks, used, expected_spec(prep.source, prep.val_fraction, prep.test_fraction), 1)


def test_the_variants_are_the_papers_and_differ_in_their_own_keys_only():
    runs = {v: loader(v, 0)["parameters"] for v in VARIANTS}
    dmae, mae, scratch = runs["dmae"], runs["mae"], runs["scratch"]
    assert (dmae["pretrain"]["model"]["sigma"], dmae["pretrain"]["model"]["loss_on"]) == (
        0.25,
        "all",
    )
    assert (mae["pretrain"]["model"]["sigma"], mae["pretrain"]["model"]["loss_on"]) == (
        0.0,
        "masked",
    )
    assert dmae["finetune"]["init"] == mae["finetune"]["init"] == "pretrain"
    assert scratch["finetune"]["init"] == "scratch"
    for a, b in [("dmae", "mae"), ("dmae", "scratch"), ("mae", "scratch")]:
        assert differences(runs[a], runs[b]) - FOLDERS <= VARIANT_KEYS
        assert differences(runs[a], runs[b]) >= FOLDERS  # the runs' own folders
    assert differences(loader("dmae", 0)["parameters"], loader("dmae", 2)["parameters"]) == (
        SEED_KEYS | FOLDERS
    )


def test_scratch_finetunes_the_classifier_that_the_others_pretrain():
    parameters = loader("scratch", 0)["parameters"]
    pretrain = BLOCKS["pretrain"].model_validate(parameters["pretrain"])
    finetune = BLOCKS["finetune"].model_validate(parameters["finetune"])
    channels = {"in_chans": 1, "mean": [0.3], "std": [0.4]}
    pretrained = pretrain.architecture(channels)  # the DMAE and MAE checkpoints' config
    assert finetune.architecture(channels, 10) == finetune.architecture(pretrained, 10)


def test_each_run_writes_into_folders_of_its_own_that_its_parameters_name():
    runs = [(v, s) for v in VARIANTS for s in (0, 1)]
    written = {}
    for variant, seed in runs:
        config = loader(variant, seed)
        catalog, parameters = config["catalog"], config["parameters"]
        folder = f"compare/{variant}/seed_{seed}"
        assert catalog["finetuned_models"]["path"] == parameters["finetune"]["run_dir"]
        assert parameters["pretrain"]["run_dir"].startswith(
            catalog["pretrained_model"]["filepath"].removesuffix("dmae.pt")
        )
        assert folder in parameters["certify"]["log_dir"]
        own = {p for p in written_paths(catalog) if folder in p}
        assert own >= {catalog[k]["dataset"]["filepath"] for k in ("certification_results",)}
        written[variant, seed] = own
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            assert not written[a] & written[b]
    base = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), env=None, **CONFIG_LOADER_ARGS)
    assert not written_paths(loader()["catalog"]) & written_paths(base["catalog"])


def test_without_params_a_run_trains_the_globals_default_in_matching_folders():
    config = loader()
    parameters, catalog = config["parameters"], config["catalog"]
    globals_ = config["globals"]["compare"]
    assert (parameters["compare"]["variant"], parameters["compare"]["seed"]) == (
        globals_["variant"],
        globals_["seed"],
    )
    assert catalog["finetuned_models"]["path"] == parameters["finetune"]["run_dir"]


VARIANTS_ = {
    "scratch": {"init": "scratch", "sigma": None, "loss_on": None},
    "dmae": {"init": "pretrain", "sigma": 0.25, "loss_on": "all"},
}
COMPARE = {
    "variant": "dmae",
    "seed": 0,
    "variants": VARIANTS_,
    "seeds": [0, 1],
    "gaps": [["dmae", "scratch"]],
    "radii": [0.0, 0.5],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variant": "mea"}, "compare.variant: expected one of scratch, dmae, got 'mea'"),
        ({"gaps": [["dmae", "mae"]]}, "compare.gaps: expected pairs of scratch, dmae, got ['mae']"),
        ({"gaps": [["dmae", "dmae"]]}, "compare.gaps: expected two different variants"),
        ({"seeds": [1, 1]}, "compare.seeds: expected distinct seeds"),
        ({"radii": [0.5, 0.0]}, "compare.radii: expected increasing radii"),
        (
            {"variants": {**VARIANTS_, "scratch": {"init": "scratch", "sigma": 0.25}}},
            "compare.variants.scratch.sigma, loss_on: expected both with init pretrain",
        ),
        (
            {"variants": {**VARIANTS_, "dmae": {"init": "pretrain", "sigma": 0.25}}},
            "compare.variants.dmae.sigma, loss_on: expected both with init pretrain",
        ),
    ],
)
def test_bad_comparisons_are_refused_with_their_dotted_key(change, message):
    CompareParams.model_validate(COMPARE)
    with pytest.raises(ParamsError) as refused:
        CompareParams.model_validate({**COMPARE, **change})
    assert message in str(refused.value)


def test_the_default_chain_leaves_the_comparison_out():
    """`kedro run` on conf/base runs every pipeline but compare, which has no data there."""
    configure_project("dmae_pipeline")
    pipelines = register_pipelines()
    chain = {node.name for node in pipelines["__default__"].nodes}
    assert {node.name for node in pipelines["report"].nodes} <= chain
    assert pipelines["compare"].nodes and not {n.name for n in pipelines["compare"].nodes} & chain
