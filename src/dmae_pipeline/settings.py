"""Kedro project settings: conf/base is the embedded default, other envs layer over it."""

import os
from importlib.metadata import entry_points

from kedro.config import OmegaConfigLoader
from omegaconf.resolvers import oc

from dmae_pipeline import distributed
from dmae_pipeline.catalog import DistributedCatalog
from dmae_pipeline.hooks import (
    DistributedHook,
    MlflowRunTagsHook,
    OutputLockHook,
    ParamsHook,
    RunSummaryHook,
    TrackingHook,
)

# MLflow draws a progress bar for every artifact it downloads while publishing a model.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Env files are merged onto conf/base key by key, so they hold only what they change.
    "merge_strategy": {"parameters": "soft"},
    # ${oc.env:VAR,default} everywhere, so MLFLOW_TRACKING_URI can redirect tracking.
    "custom_resolvers": {"oc.env": oc.env},
}
# Under torchrun, rank 0 alone saves catalog outputs; in one process this is Kedro's DataCatalog.
DATA_CATALOG_CLASS = DistributedCatalog
# kedro-mlflow's hook is registered here, as TrackingHook, so that typed parameters are logged
# key by key: its automatic registration is turned off. Under torchrun (RANK > 0) the other
# ranks run neither tracking nor any plugin's hooks (kedro-viz's run statistics, telemetry), so
# that one torchrun invocation is one MLflow run and no file is written twice; rank 0, which
# writes the outputs, alone locks them and prints the end-of-run summary.
if distributed.is_main():
    DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",)
    HOOKS = (
        DistributedHook(),
        ParamsHook(),
        OutputLockHook(),
        TrackingHook(),
        MlflowRunTagsHook(),
        RunSummaryHook(),
    )
else:
    DISABLE_HOOKS_FOR_PLUGINS = tuple(
        sorted({e.dist.name for e in entry_points(group="kedro.hooks")})
    )
    HOOKS = (DistributedHook(), ParamsHook())
