"""Kedro project settings: conf/base is the embedded default, other envs layer over it."""

from kedro.config import OmegaConfigLoader
from omegaconf.resolvers import oc

from dmae_pipeline.hooks import MlflowRunTagsHook, ParamsHook, TrackingHook

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Env files are merged onto conf/base key by key, so they hold only what they change.
    "merge_strategy": {"parameters": "soft"},
    # ${oc.env:VAR,default} everywhere, so MLFLOW_TRACKING_URI can redirect tracking.
    "custom_resolvers": {"oc.env": oc.env},
}
# kedro-mlflow's hook is registered here, as TrackingHook, so that typed parameters are logged
# key by key: its automatic registration is turned off.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",)
HOOKS = (ParamsHook(), TrackingHook(), MlflowRunTagsHook())
