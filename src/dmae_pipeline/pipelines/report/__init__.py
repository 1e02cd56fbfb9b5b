"""report: certified-accuracy tables, curves, metrics and plot from the certification results."""

from dmae_pipeline.pipelines.report.pipeline import create_pipeline

__all__ = ["create_pipeline"]
