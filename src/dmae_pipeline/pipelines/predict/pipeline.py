"""predict: finetuned_models (those of predict.sigmas, by default finetune.sigmas),
dataset_spec, the images at predict.input, params:predict over params:certify (and report.radii,
which sequential mode settles) -> per-image logs in predict.log_dir -> predictions (one table,
all models).

Not part of ``__default__``: it needs images that the user names."""

from kedro.pipeline import Pipeline, node

from dmae_pipeline.pipelines.predict.nodes import merge_predictions, predict_images


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                predict_images,
                inputs=[
                    "finetuned_models",
                    "dataset_spec",
                    "params:finetune.sigmas",
                    "params:report.radii",
                    "params:certify",
                    "params:predict",
                ],
                outputs="prediction_logs",
                name="predict_images",
            ),
            node(
                merge_predictions,
                inputs="prediction_logs",
                outputs="predictions",
                name="merge_predictions",
            ),
        ],
        namespace="predict",
        prefix_datasets_with_namespace=False,
    )
