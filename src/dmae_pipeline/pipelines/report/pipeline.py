"""report: certification_results, params:report -> certified-accuracy table (CSV, Markdown),
curves (CSV), plot (PNG) and metrics (the whole table and a summary for DVC as JSON, MLflow metrics
and curve histories), every certified accuracy and ACR with its interval over the test images."""

from kedro.pipeline import Pipeline, node

from dmae_pipeline.pipelines.report.nodes import (
    collect_certification_metrics,
    plot_certified_accuracy,
    tabulate_certified_accuracy,
    tabulate_certified_accuracy_curves,
    write_markdown_report,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                tabulate_certified_accuracy,
                inputs=["certification_results", "params:report"],
                outputs="certified_accuracy_table",
                name="tabulate_certified_accuracy",
            ),
            node(
                tabulate_certified_accuracy_curves,
                inputs=["certification_results", "params:report"],
                outputs="certified_accuracy_curve",
                name="tabulate_certified_accuracy_curves",
            ),
            node(
                write_markdown_report,
                inputs=["certified_accuracy_table", "params:report"],
                outputs="certified_accuracy_markdown",
                name="write_markdown_report",
            ),
            node(
                collect_certification_metrics,
                inputs=["certified_accuracy_table", "certified_accuracy_curve", "params:report"],
                outputs=[
                    "certified_accuracy_metrics",
                    "certified_accuracy_summary",
                    "certified_accuracy_mlflow_metrics",
                ],
                name="collect_certification_metrics",
            ),
            node(
                plot_certified_accuracy,
                inputs=["certified_accuracy_curve", "params:report"],
                outputs="certified_accuracy_plot",
                name="plot_certified_accuracy",
            ),
        ],
        namespace="report",
        prefix_datasets_with_namespace=False,
    )
