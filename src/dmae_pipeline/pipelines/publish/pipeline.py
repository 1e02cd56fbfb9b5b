"""publish: finetuned_models (those certification_results holds), test_split (an input
example), dataset_spec, params:certify and the radii of params:report (a request's defaults),
params:publish -> the models logged into the run and registered, listed in published_models.

certification_results is what orders publish after certify: a model is published with the
settings it was certified with.
"""

from kedro.pipeline import Pipeline, node

from dmae_pipeline.pipelines.publish.nodes import publish_smoothed_classifiers


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                publish_smoothed_classifiers,
                inputs=[
                    "finetuned_models",
                    "certification_results",
                    "test_split",
                    "dataset_spec",
                    "params:certify",
                    "params:report",
                    "params:publish",
                ],
                outputs="published_models",
                name="publish_smoothed_classifiers",
            )
        ],
        namespace="publish",
        prefix_datasets_with_namespace=False,
    )
