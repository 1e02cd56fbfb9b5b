"""`kedro run --pipelines=certify,publish` on tiny finetuned models, in a temporary project: every
certified model registered, answering as its certification log."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
from test_certify import write_model

from conftest import run_kedro
from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.io import safe_torch_load
from dmae_pipeline.params import ParamsError
from dmae_pipeline.smoothing import image_seed

pytestmark = pytest.mark.slow

PUBLISHED = "data/07_model_output/published_models.json"


@pytest.fixture
def project(kedro_project):
    run_kedro(kedro_project, "data_prep", "test")
    write_model(kedro_project, "sigma_0.25", 0.25, constant=False, seed=0)
    write_model(kedro_project, "sigma_0.50", 0.5, constant=False, seed=1)
    return kedro_project


def test_each_certified_model_is_registered_and_answers_as_its_certification_log(project):
    run_kedro(project, "certify,publish", "test")

    published = json.loads((project / PUBLISHED).read_text())
    assert published == {
        label: {
            "sigma": sigma,
            "registered_model": f"dmae_digits_{label}",
            "version": 1,
            "model_uri": f"models:/dmae_digits_{label}/1",
        }
        for label, sigma in [("sigma_0.25", 0.25), ("sigma_0.50", 0.5)]
    }
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("dmae_pipeline").experiment_id
    (run,) = client.search_runs([experiment], "tags.pipelines = 'certify,publish'")
    for entry in published.values():
        assert client.get_model_version(entry["registered_model"], "1").run_id == run.info.run_id

    # image idx of the test split was certified with noise seeded image_seed(certify.seed, idx):
    # the served model, given that seed, draws the same noise and answers the same
    spec = json.loads((project / "data/05_model_input/dataset_spec.json").read_text())
    test_set = SplitDataset(
        safe_torch_load(project / "data/05_model_input/test.pt"), build_transform(spec, train=False)
    )
    table = pd.read_csv(project / "data/07_model_output/certification_results.csv")
    for label, entry in published.items():
        model = mlflow.pyfunc.load_model(entry["model_uri"])
        for row in table[table["sigma"] == entry["sigma"]].itertuples():
            x = test_set[row.idx][0][None].numpy()
            answer = model.predict(x, params={"seed": image_seed(0, row.idx)}).iloc[0]
            logged = [row.predict, row.radius, row.pA_lower, row.n]
            assert answer[["prediction", "radius", "p_a_lower", "n"]].tolist() == logged, label
    assert len(table) == 10

    run_kedro(project, "publish", "test")  # alone, from the files on disk: new versions
    assert {e["version"] for e in json.loads((project / PUBLISHED).read_text()).values()} == {2}


def test_a_certify_n_above_the_published_limit_stops_the_run_before_it_starts(project):
    with pytest.raises(ParamsError, match=r"certify\.n: 50 exceeds publish\.max_n \(10\)"):
        run_kedro(project, "certify,publish", "test", params={"publish": {"max_n": 10}})
    assert not (project / "data/07_model_output/certify").exists()
