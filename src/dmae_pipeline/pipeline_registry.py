"""One Kedro pipeline per folder under pipelines/; ``__default__`` chains them all but compare,
which sets the runs of the compare env against each other after they are done."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

OUTSIDE_THE_CHAIN = ("compare",)


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    chain = [p for name, p in pipelines.items() if name not in OUTSIDE_THE_CHAIN]
    pipelines["__default__"] = sum(chain, Pipeline([]))
    return pipelines
