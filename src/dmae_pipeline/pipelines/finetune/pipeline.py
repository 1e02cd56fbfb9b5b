"""finetune: dataset_spec, train_split, val_split, the DMAE checkpoints (optional inputs: which
one is used is finetune.init.from) and params:finetune -> finetuned_models, finetune_validation.

Both checkpoints are inputs so that a full run orders finetune after pretrain and cifar_pretrain.
The test split is not an input: model selection never sees it.
"""

from kedro.pipeline import Pipeline, node

from dmae_pipeline.pipelines.finetune.nodes import finetune_classifiers


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                finetune_classifiers,
                inputs={
                    "dataset_spec": "dataset_spec",
                    "train_split": "train_split",
                    "val_split": "val_split",
                    "pretrained_model": "pretrained_model",
                    "cifar_pretrained_model": "cifar_pretrained_model",
                    "params": "params:finetune",
                },
                outputs=["finetuned_models", "finetune_validation"],
                name="finetune_classifiers",
            )
        ],
        namespace="finetune",
        prefix_datasets_with_namespace=False,
    )
