"""dmae_training: a DMAE trained on the training split, one instance per stage, each under the
stage's namespace and parameter block (a group of its own in kedro viz):

- pretrain: dataset_spec, train_split, params:pretrain
  -> pretrained_model (pipeline checkpoint), pretrained_export (released plain state dict),
  pretrain_reconstruction (figure)
- cifar_pretrain: the same and pretrained_model, params:cifar_pretrain -> cifar_pretrained_*

cifar_pretrain reads pretrained_model even when its init names a released file, so that a full
run orders pretrain first; the catalog marks it optional (None when missing).
"""

from kedro.pipeline import Pipeline, node, pipeline

from dmae_pipeline.pipelines.dmae_training.nodes import continue_pretraining, pretrain_dmae

# Per stage: its node, the checkpoints it may start from and its outputs' dataset names.
STAGES = {
    "pretrain": (
        pretrain_dmae,
        [],
        {
            "model": "pretrained_model",
            "export": "pretrained_export",
            "reconstruction": "pretrain_reconstruction",
        },
    ),
    "cifar_pretrain": (
        continue_pretraining,
        ["pretrained_model"],
        {
            "model": "cifar_pretrained_model",
            "export": "cifar_pretrained_export",
            "reconstruction": "cifar_pretrain_reconstruction",
        },
    ),
}


def create_pipeline(stage: str) -> Pipeline:
    """The instance of ``stage``, pretrain or cifar_pretrain."""
    train, checkpoints, outputs = STAGES[stage]
    template = Pipeline(
        [
            node(
                train,
                inputs=["dataset_spec", "train_split", *checkpoints, "params:stage"],
                outputs=["model", "export", "reconstruction"],
                name="train_dmae",
            )
        ]
    )
    return pipeline(
        template,
        namespace=stage,
        inputs={"dataset_spec", "train_split", *checkpoints},
        outputs=outputs,
        parameters={"stage": stage},
    )
