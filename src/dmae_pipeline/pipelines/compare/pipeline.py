"""compare: run_certification_results (every run's, conf/compare), params:compare ->
comparison_table (per variant over its seeds), comparison_gaps (paired bootstrap),
comparison_markdown, comparison_plot, comparison_metrics (MLflow).

Runs on the compare env only, after its variants' runs; it is not part of the default chain.
"""

from kedro.pipeline import Pipeline, node

from dmae_pipeline.pipelines.compare.nodes import (
    collect_comparison_metrics,
    collect_runs,
    plot_comparison,
    tabulate_comparison,
    write_comparison_markdown,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                collect_runs,
                inputs=["run_certification_results", "params:compare"],
                outputs="comparison_results",
                name="collect_runs",
            ),
            node(
                tabulate_comparison,
                inputs=["comparison_results", "params:compare"],
                outputs=["comparison_table", "comparison_gaps"],
                name="tabulate_comparison",
            ),
            node(
                write_comparison_markdown,
                inputs=["comparison_table", "comparison_gaps", "params:compare"],
                outputs="comparison_markdown",
                name="write_comparison_markdown",
            ),
            node(
                collect_comparison_metrics,
                inputs=["comparison_table", "comparison_gaps"],
                outputs="comparison_metrics",
                name="collect_comparison_metrics",
            ),
            node(
                plot_comparison,
                inputs=["comparison_results", "params:compare", "params:report"],
                outputs="comparison_plot",
                name="plot_comparison",
            ),
        ],
        namespace="compare",
        prefix_datasets_with_namespace=False,
    )
