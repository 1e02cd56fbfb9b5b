"""Kedro project settings: conf/base is the embedded default, other envs layer over it."""

from kedro.config import OmegaConfigLoader
from omegaconf.resolvers import oc

from dmae_pipeline.hooks import MlflowRunTagsHook

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # ${oc.env:VAR,default} everywhere, so MLFLOW_TRACKING_URI can redirect tracking.
    "custom_resolvers": {"oc.env": oc.env},
}
HOOKS = (MlflowRunTagsHook(),)
