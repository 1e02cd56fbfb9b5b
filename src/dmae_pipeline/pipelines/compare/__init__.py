"""compare: the variants' runs (conf/compare) set against each other: table, gaps and plot."""

from dmae_pipeline.pipelines.compare.pipeline import create_pipeline

__all__ = ["create_pipeline"]
