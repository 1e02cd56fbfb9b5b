"""cifar_pretrain: dataset_spec, train_split, the pretrain checkpoint and params:cifar_pretrain
-> cifar_pretrained_model, cifar_pretrained_export, cifar_pretrain_reconstruction.

``pretrained_model`` is an input even when the parameters name a released init file, so that a
full run orders pretrain first; it loads as None when missing (the catalog marks it optional).
"""

from kedro.pipeline import Pipeline, node

from dmae_pipeline.pipelines.cifar_pretrain.nodes import continue_pretraining


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                continue_pretraining,
                inputs=["dataset_spec", "train_split", "pretrained_model", "params:cifar_pretrain"],
                outputs=[
                    "cifar_pretrained_model",
                    "cifar_pretrained_export",
                    "cifar_pretrain_reconstruction",
                ],
                name="cifar_pretrain_dmae",
            )
        ]
    )
