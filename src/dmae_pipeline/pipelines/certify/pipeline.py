"""certify: finetuned_models (the models of finetune.sigmas), test_split, dataset_spec,
params:certify (and report.radii, which sequential mode settles) -> per-image logs in
certify.log_dir -> certification_results (one table, all sigmas)."""

from kedro.pipeline import Pipeline, node

from dmae_pipeline.pipelines.certify.nodes import certify_test_split, merge_certification_logs


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                certify_test_split,
                inputs=[
                    "finetuned_models",
                    "test_split",
                    "dataset_spec",
                    "params:finetune.sigmas",
                    "params:report.radii",
                    "params:certify",
                ],
                outputs="certification_logs",
                name="certify_test_split",
            ),
            node(
                merge_certification_logs,
                inputs="certification_logs",
                outputs="certification_results",
                name="merge_certification_logs",
            ),
        ],
        namespace="certify",
        prefix_datasets_with_namespace=False,
    )
