"""pretrain: dataset_spec, train_split, params:pretrain -> pretrained_model (pipeline checkpoint),
pretrained_export (released plain state dict), pretrain_reconstruction (figure)."""

from kedro.pipeline import Pipeline, node

from dmae_pipeline.pipelines.pretrain.nodes import pretrain_dmae


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                pretrain_dmae,
                inputs=["dataset_spec", "train_split", "params:pretrain"],
                outputs=["pretrained_model", "pretrained_export", "pretrain_reconstruction"],
                name="pretrain_dmae",
            )
        ]
    )
