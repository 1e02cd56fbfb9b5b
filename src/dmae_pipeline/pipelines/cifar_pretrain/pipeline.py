"""cifar_pretrain: dataset_spec, train_split, params:cifar_pretrain and the pretrain checkpoint
-> cifar_pretrained_model, cifar_pretrained_export, cifar_pretrain_reconstruction.

``pretrained_model`` is an input even when the parameters name a released init file, so that a
full run orders pretrain first; it loads as None when missing (the catalog marks it optional).
"""

from kedro.pipeline import Pipeline, node

from dmae_pipeline.pipelines.cifar_pretrain.nodes import stage_node


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                stage_node("cifar_pretrain"),
                inputs={
                    "dataset_spec": "dataset_spec",
                    "train_split": "train_split",
                    "params": "params:cifar_pretrain",
                    "init_checkpoint": "pretrained_model",
                },
                outputs=[
                    "cifar_pretrained_model",
                    "cifar_pretrained_export",
                    "cifar_pretrain_reconstruction",
                ],
                name="cifar_pretrain_dmae",
            )
        ]
    )
