"""dmae_training: a DMAE trained on dataset_spec and train_split -> its checkpoint, the released
plain state dict and a reconstruction figure; one instance per stage (pretrain, cifar_pretrain),
each under the stage's namespace, parameter block and dataset names. cifar_pretrain also reads
pretrained_model, even when its init names a file, so that a full run orders pretrain first
(optional in the catalog: None when missing)."""

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
