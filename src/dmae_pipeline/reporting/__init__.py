"""Tables, metrics and figures for people and trackers (pandas, matplotlib): the pipeline side of
the library's numbers."""

from dmae_pipeline.reporting.certification import (
    curve_table,
    flat_metrics,
    markdown_report,
    metric_histories,
    plot_curves,
    sigma_label,
    summary_table,
)
from dmae_pipeline.reporting.reconstruction import reconstruction_figure

__all__ = [
    "curve_table",
    "flat_metrics",
    "markdown_report",
    "metric_histories",
    "plot_curves",
    "reconstruction_figure",
    "sigma_label",
    "summary_table",
]
