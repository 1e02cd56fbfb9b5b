"""data_prep: params:data_prep -> dataset_spec, train_split, val_split, test_split."""

from kedro.pipeline import Pipeline, node

from dmae_pipeline.pipelines.data_prep.nodes import prepare_dataset


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                prepare_dataset,
                inputs="params:data_prep",
                outputs=["dataset_spec", "train_split", "val_split", "test_split"],
                name="prepare_dataset",
            )
        ],
        namespace="data_prep",
        prefix_datasets_with_namespace=False,
    )
