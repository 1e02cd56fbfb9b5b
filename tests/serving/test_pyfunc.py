"""The logged smoothed classifier: what it holds, and that it loads by its registered name in a
Python that has neither this project's sources nor Kedro, and answers as Smooth.certify."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import urllib.parse
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from dmae_pipeline.serving import SmoothedClassifier, log_smoothed_classifier

from .conftest import NAME, bare_env
from .tiny import DEFAULTS, LIMITS, RADII, SIGMA, SPEC, images, tiny_checkpoint

pytestmark = pytest.mark.slow

LOAD_AND_PREDICT = """
import json, sys
import mlflow, numpy as np
model = mlflow.pyfunc.load_model("models:/{name}/latest")
import dmae_pipeline
x = np.load("images.npy")
rows = [model.predict(x).to_dict("records")]
params = {{"n": 300, "seed": 5, "mode": "sequential"}}
rows.append(model.predict(x, params=params).to_dict("records"))
found = {{"package": dmae_pipeline.__file__, "kedro": "kedro" in sys.modules}}
print(json.dumps({{**found, "rows": rows}}))
"""


def test_the_registered_model_loads_elsewhere_without_the_project_and_answers_as_smooth(
    registered, tmp_path
):
    x = images(3, seed=1)
    np.save(tmp_path / "images.npy", x)
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT.format(name=NAME)],
        cwd=tmp_path, env=bare_env(registered.uri), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.splitlines()[-1])
    assert answer["package"].startswith(str(registered.folder / "mlruns"))  # the model's own code
    assert answer["package"].endswith("/artifacts/code/dmae_pipeline/__init__.py")
    assert not answer["kedro"]
    classifier = SmoothedClassifier.from_checkpoint(tiny_checkpoint(), SPEC)
    sequential = dataclasses.replace(DEFAULTS, n=300, seed=5, radii=RADII)
    for rows, settings in zip(answer["rows"], [DEFAULTS, sequential], strict=True):
        expected = classifier.certify(x, settings)
        pd.testing.assert_frame_equal(pd.DataFrame(rows), expected, check_exact=True)


def test_the_model_holds_its_weights_settings_signature_and_example(registered):
    client = mlflow.MlflowClient(registered.uri)
    version = client.get_model_version(NAME, "1")
    assert version.run_id == registered.run_id
    location = client.get_logged_model(registered.info.model_id).artifact_location
    local = urllib.parse.urlparse(location).path
    model = mlflow.models.Model.load(local)
    config = json.loads(Path(local, "artifacts", "settings.json").read_text())
    assert client.get_run(registered.run_id).data.params == {}  # the run's own params only
    assert config["sigma"] == SIGMA
    assert config["dataset"] == SPEC
    assert config["certify"] == dataclasses.asdict(DEFAULTS)
    assert config["radii"] == list(RADII)
    assert config["limits"] == {"max_n": LIMITS.max_n, "max_images": LIMITS.max_images}
    assert (config["device"], config["amp"]) == ("auto", "auto")
    (spec,) = model.signature.inputs.inputs
    assert (spec.type, spec.shape) == (np.dtype("float32"), (-1, 1, 16, 16))
    assert model.signature.outputs.input_names() == [
        "prediction", "radius", "p_a_lower", "n", "sigma", "class_name",
    ]  # fmt: skip
    defaults = {p.name: p.default for p in model.signature.params.params}
    assert defaults == {
        "n": DEFAULTS.n, "n0": DEFAULTS.n0, "alpha": DEFAULTS.alpha, "mode": "fixed",
        "radii": list(RADII), "seed": DEFAULTS.seed,
    }  # fmt: skip
    example = json.loads(model.get_serving_input(local))
    assert np.array(example["inputs"], dtype=np.float32).shape == (1, 1, 16, 16)
    assert example["params"] == {"n": DEFAULTS.n}  # at most EXAMPLE_N = 100


@pytest.mark.parametrize(
    "change, message",
    [
        ({"spec": {**SPEC, "channels": 3}}, "with in_chans=1, not 3"),
        ({"defaults": dataclasses.replace(DEFAULTS, n=LIMITS.max_n + 1)}, "limit max_n=1000"),
        ({"example": images(1) * 2}, "pixels must be in [0, 1]"),
    ],
)
def test_what_cannot_be_served_is_refused_before_anything_is_logged(registered, change, message):
    args = {"spec": SPEC, "defaults": DEFAULTS, "example": images(1)} | change
    client = mlflow.MlflowClient(registered.uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    before = client.search_logged_models(experiments)
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        log_smoothed_classifier(
            tiny_checkpoint(), args["spec"], args["defaults"], LIMITS, args["example"],
            name="refused", registered_model_name=NAME,
        )  # fmt: skip
    assert len(client.search_logged_models(experiments)) == len(before)
