"""The pipelines, one per stage, each under a namespace of its name; ``__default__`` chains the
stages. Outside the chain: compare, which sets the runs of the compare env against each other
once they are done, and predict, which answers for images that the user names."""

from kedro.pipeline import Pipeline

from dmae_pipeline.pipelines import (
    certify,
    compare,
    data_prep,
    dmae_training,
    finetune,
    predict,
    publish,
    report,
)


def register_pipelines() -> dict[str, Pipeline]:
    stages = {
        "data_prep": data_prep.create_pipeline(),
        "pretrain": dmae_training.create_pipeline("pretrain"),
        "cifar_pretrain": dmae_training.create_pipeline("cifar_pretrain"),
        "finetune": finetune.create_pipeline(),
        "certify": certify.create_pipeline(),
        "report": report.create_pipeline(),
        "publish": publish.create_pipeline(),
    }
    return {
        **stages,
        "__default__": sum(stages.values(), Pipeline([])),
        "compare": compare.create_pipeline(),
        "predict": predict.create_pipeline(),
    }
