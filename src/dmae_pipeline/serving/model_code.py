"""The model code MLflow logs with each smoothed classifier (MLflow's models from code): loading
the model runs this file, with the package from the model's own ``code/`` folder first on the
path."""

from mlflow.models import set_model

from dmae_pipeline.serving.pyfunc import SmoothedClassifierModel

set_model(SmoothedClassifierModel())
