"""Batch prediction: the images of a folder or an array file read as the test split is, and
`kedro run --pipelines=predict` writing the served model's answers, resuming, and under torchrun
equal to one process."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_certify import model_input, write_model  # noqa: F401 (model_input: a fixture)

from conftest import env_parameters, run_kedro
from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.io import safe_torch_load
from dmae_pipeline.params import BLOCKS, ParamsError, check_run
from dmae_pipeline.serving import COLUMNS, Limits, SmoothedClassifier, log_smoothed_classifier
from dmae_pipeline.serving.batch import predictions, read_inputs
from dmae_pipeline.smoothing import (
    UNLABELLED_LOG_COLUMNS,
    CertifySettings,
    certify_dataset,
    image_seed,
    merge_shard_logs,
    read_log,
)
from serving.tiny import tiny_checkpoint

IMAGES = 5  # test digits per input
PREDICTIONS = Path("data/07_model_output/predictions.csv")
LOGS = Path("data/07_model_output/predict")
TORCHRUN = Path(sys.executable).with_name("torchrun")
NAMES = ["a.png", "b.png", "c.png", "more/d.png", "more/e.png"]  # sorted: idx 0..4


def digits_test_split(folder: Path) -> tuple[dict, SplitDataset]:
    """The dataset spec and the test split as certify reads it."""
    spec = json.loads((folder / "dataset_spec.json").read_text())
    split = safe_torch_load(folder / "test.pt")
    return spec, SplitDataset(split, build_transform(spec, train=False))


def write_pngs(folder: Path, split: SplitDataset) -> Path:
    """The first IMAGES test digits as grey PNGs named NAMES (one subfolder)."""
    for name, i in zip(NAMES, range(IMAGES), strict=True):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        pixels = (split[i][0][0] * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels, mode="L").save(folder / name)
    return folder


def write_npy(path: Path, split: SplitDataset) -> Path:
    np.save(path, torch.stack([split[i][0] for i in range(IMAGES)]).numpy())
    return path


# --- the inputs, without Kedro ------------------------------------------------------------------


def test_pngs_and_an_array_read_as_the_test_split(model_input, tmp_path):  # noqa: F811
    spec, split = digits_test_split(model_input)
    folder = read_inputs(write_pngs(tmp_path / "pngs", split), spec)
    array = read_inputs(write_npy(tmp_path / "x.npy", split), spec)
    assert folder.files == tuple(NAMES) and array.files is None
    assert len(folder) == len(array) == IMAGES
    for i in range(IMAGES):
        assert torch.equal(folder[i][0], split[i][0]) and folder[i][1] is None
        assert torch.equal(array[i][0], split[i][0])
    assert folder.described["digest"] != array.described["digest"]
    # the digest, and so the logs' fingerprint, changes with a file's bytes or name
    before = folder.described
    Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(tmp_path / "pngs/a.png")
    assert read_inputs(tmp_path / "pngs", spec).described != before
    (tmp_path / "pngs/a.png").rename(tmp_path / "pngs/z.png")
    assert read_inputs(tmp_path / "pngs", spec).files[-1] == "z.png"


def test_an_image_folder_dataset_resizes_any_size_as_its_eval_transform(tmp_path):
    spec = {"name": "imagenet", "source": "imagefolder", "image_size": 16, "channels": 3}
    pixels = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.jpg")
    Image.fromarray(pixels[:, :, 0]).save(tmp_path / "grey.png")  # decoded as RGB
    inputs = read_inputs(tmp_path, spec)
    with Image.open(tmp_path / "photo.jpg") as f:
        expected = build_transform(spec, train=False)(f.convert("RGB"))
    assert inputs.files == ("grey.png", "photo.jpg")
    assert torch.equal(inputs[1][0], expected) and expected.shape == (3, 16, 16)
    assert inputs[0][0].shape == (3, 16, 16)


def bad_input(tmp_path: Path, case: str) -> Path:
    """An input of each kind that predict refuses."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(folder / "ok.png")
    if case == "missing":
        return tmp_path / "no_such_folder"
    if case == "not an image":
        (folder / "notes.txt").write_text("not an image")
    elif case == "empty folder":
        (folder / "ok.png").unlink()
    elif case == "corrupt png":
        (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    elif case == "gif":
        Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(folder / "x.png", "GIF")
    elif case == "wrong size":
        Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(folder / "small.png")
    elif case == "text file":
        (tmp_path / "images.txt").write_text("")
        return tmp_path / "images.txt"
    elif case == "array pickled":
        np.save(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return tmp_path / "x.npy"
    elif case.startswith("array"):
        arrays = {
            "array wrong shape": np.zeros((2, 1, 8, 16), np.float32),
            "array no batch axis": np.zeros((1, 16, 16), np.float32),
            "array uint8": np.zeros((2, 1, 16, 16), np.uint8),
            "array above 1": np.full((2, 1, 16, 16), 2.0, np.float32),
            "array NaN": np.full((2, 1, 16, 16), np.nan, np.float32),
        }
        np.save(tmp_path / "x.npy", arrays[case])
        return tmp_path / "x.npy"
    return folder


BAD_INPUTS = {
    "missing": (FileNotFoundError, r"no_such_folder does not exist: expected a folder of PNG/JPEG"),
    "not an image": (
        ValueError,
        r"images holds 1 file\(s\) that are not PNG or JPEG images, such as notes\.txt: expected "
        r"only \.png, \.jpg, \.jpeg files",
    ),
    "empty folder": (ValueError, r"images holds no images"),
    "corrupt png": (ValueError, r"images/bad\.png is not a readable PNG or JPEG image"),
    "gif": (ValueError, r"images/x\.png is a GIF image, not PNG or JPEG"),
    "wrong size": (
        ValueError,
        r"images/small\.png is 8x8: a digits model takes 16x16 images, the dataset's native "
        r"resolution",
    ),
    "text file": (ValueError, r"images\.txt is neither a folder nor an \.npy file"),
    "array wrong shape": (
        ValueError,
        r"x\.npy: images: expected N x 1 x 16 x 16 float32 pixels in \[0, 1\], got shape "
        r"\(2, 1, 8, 16\)",
    ),
    "array no batch axis": (ValueError, r"x\.npy: images: .* got shape \(1, 16, 16\)"),
    "array uint8": (ValueError, r"x\.npy: images: .* got dtype uint8"),
    "array above 1": (ValueError, r"x\.npy: images: pixels must be in \[0, 1\], got values in"),
    "array NaN": (ValueError, r"x\.npy: images: NaN or infinite pixels in image\(s\) \[0, 1\]"),
    "array pickled": (ValueError, r"x\.npy is not a readable \.npy array file"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_are_refused_naming_the_file_and_what_is_expected(model_input, tmp_path, case):  # noqa: F811
    spec, _ = digits_test_split(model_input)
    error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        read_inputs(bad_input(tmp_path, case), spec)


def test_a_log_becomes_the_served_models_rows_with_the_files(model_input, tmp_path):  # noqa: F811
    spec, split = digits_test_split(model_input)
    inputs = read_inputs(write_pngs(tmp_path / "pngs", split), spec)
    classifier = SmoothedClassifier.from_checkpoint(tiny_checkpoint(), spec)
    settings = CertifySettings(n0=10, n=50, alpha=0.01, batch_size=25, seed=3)
    log = certify_dataset(
        classifier.smooth, inputs, [4, 0, 2], settings, tmp_path / "log.tsv", progress=False,
        labelled=False,
    )  # fmt: skip
    assert list(log) == list(UNLABELLED_LOG_COLUMNS) and log["idx"].tolist() == [4, 0, 2]
    table = predictions(log, inputs, classifier.sigma, classifier.class_names)
    assert list(table.columns) == ["idx", "file", *COLUMNS]
    assert table["file"].tolist() == ["more/e.png", "a.png", "c.png"]
    # each row is the classifier's answer for its image alone with the seed image_seed(3, idx)
    for row in table.to_dict("records"):
        seeded = dataclasses.replace(settings, seed=image_seed(3, row["idx"]))
        answer = classifier.certify(split[row["idx"]][0][None], seeded).iloc[0].to_dict()
        assert {k: row[k] for k in COLUMNS} == answer
    assert len({row["p_a_lower"] for row in table.to_dict("records")}) > 1  # not all alike


def test_logs_without_labels_merge_as_certification_logs(model_input, tmp_path):  # noqa: F811
    spec, split = digits_test_split(model_input)
    inputs = read_inputs(write_npy(tmp_path / "x.npy", split), spec)
    classifier = SmoothedClassifier.from_checkpoint(tiny_checkpoint(), spec)
    settings = CertifySettings(n0=10, n=50, alpha=0.01, batch_size=25)
    paths = [tmp_path / "rank_0.tsv", tmp_path / "rank_1.tsv"]
    for rank, path in enumerate(paths):
        certify_dataset(
            classifier.smooth, inputs, range(rank, IMAGES, 2), settings, path, progress=False,
            labelled=False,
        )  # fmt: skip
    merged = merge_shard_logs(paths, [range(IMAGES)], UNLABELLED_LOG_COLUMNS)
    assert merged["idx"].tolist() == list(range(IMAGES))
    with pytest.raises(ValueError, match=r"rank_0\.tsv has columns \['idx', 'predict'"):
        merge_shard_logs(paths, [range(IMAGES)])  # read as labelled logs
    with pytest.raises(ValueError, match="stop_at_selection needs labelled images"):
        sequential = dataclasses.replace(settings, radii=(0.25,), stop_at_selection=True)
        certify_dataset(classifier.smooth, inputs, [0], sequential, paths[0], labelled=False)


def test_the_predict_block_is_checked_and_a_run_needs_an_input():
    block = BLOCKS["predict"]
    with pytest.raises(ParamsError, match=r"predict\.mode: Input should be 'fixed' or"):
        block.model_validate({"log_dir": "logs", "mode": "fast"})
    with pytest.raises(ParamsError, match=r"predict\.radii: expected increasing radii"):
        block.model_validate({"log_dir": "logs", "radii": [0.5, 0.25]})
    # conf/base names no input: the block validates (kedro viz reads every pipeline's blocks),
    # and the run checks refuse a run of predict without one, before it starts
    unnamed = block.model_validate(env_parameters("base")["predict"])
    assert unnamed.input is None and unnamed.n is None
    with pytest.raises(ParamsError, match=r"predict\.input: expected a folder of PNG/JPEG images"):
        check_run({"predict": unnamed}, {"predict"}, None, 1)
    check_run({"predict": unnamed.model_copy(update={"input": "x"})}, {"predict"}, None, 1)


# --- kedro run --pipelines=predict ------------------------------------------------------------


@pytest.fixture
def project(kedro_project, model_input) -> Path:  # noqa: F811
    """The test env's prepared digits, two tiny finetuned models, and the first IMAGES test
    digits as PNGs (data/01_raw/digits/) and as an array (data/01_raw/digits.npy)."""
    shutil.copytree(model_input, kedro_project / "data/05_model_input", dirs_exist_ok=True)
    write_model(kedro_project, "sigma_0.25", 0.25, constant=False, seed=0)
    write_model(kedro_project, "sigma_0.50", 0.5, constant=False, seed=1)
    _, split = digits_test_split(model_input)
    write_pngs(kedro_project / "data/01_raw/digits", split)
    write_npy(kedro_project / "data/01_raw/digits.npy", split)
    return kedro_project


def predict(project: Path, source: str, **params) -> pd.DataFrame:
    """``kedro run --pipelines=predict --env=test`` on ``source``; the predictions it wrote."""
    run_kedro(project, "predict", "test", params={"predict": {"input": source, **params}})
    return pd.read_csv(project / PREDICTIONS, keep_default_na=False)  # "": abstained


def served(project: Path, partition: str, sigma: float):
    """The finetuned partition logged as the served model (the test env's certify settings and
    report radii as defaults), loaded back as MLflow loads it."""
    spec, split = digits_test_split(project / "data/05_model_input")
    checkpoint = safe_torch_load(project / f"data/06_models/finetune/{partition}.pt")
    defaults = CertifySettings(n0=10, n=50, alpha=0.001, batch_size=25)  # conf/test's certify
    with mlflow.start_run():
        info = log_smoothed_classifier(
            checkpoint, spec, defaults, Limits(max_n=1000, max_images=8), split[0][0][None].numpy(),
            radii=(0.0, 0.25, 0.5, 1.0), name=partition.replace(".", "_"),
        )  # fmt: skip
    assert checkpoint["sigma"] == sigma
    return mlflow.pyfunc.load_model(info.model_uri), split


@pytest.mark.slow
def test_predictions_are_the_served_models_answers_for_folders_and_arrays(project):
    table = predict(project, "data/01_raw/digits")
    assert list(table.columns) == ["idx", "file", *COLUMNS]
    assert table[["sigma", "idx"]].values.tolist() == [
        [sigma, idx] for sigma in (0.25, 0.5) for idx in range(IMAGES)
    ]
    assert table["file"].tolist() == NAMES * 2
    # row idx is the served model's answer for image idx alone with the seed image_seed(0, idx)
    for partition, sigma in (("sigma_0.25", 0.25), ("sigma_0.50", 0.5)):
        model, split = served(project, partition, sigma)
        rows = table[table["sigma"] == sigma].to_dict("records")
        for row in rows:
            x = split[row["idx"]][0][None].numpy()
            answer = model.predict(x, params={"seed": image_seed(0, row["idx"])})
            assert answer.iloc[0].to_dict() == {k: row[k] for k in COLUMNS}
    assert len(set(table["p_a_lower"])) > 2 and (table["prediction"] >= 0).any()

    # the same images as an array: the same rows, without the files
    array = predict(project, "data/01_raw/digits.npy")
    pd.testing.assert_frame_equal(array, table.drop(columns="file"))

    # sequential mode, other settings, one model: the served model given the same parameters
    sequential = predict(
        project, "data/01_raw/digits", sigmas=[0.5], mode="sequential", n=400, seed=7
    )
    assert set(sequential["sigma"]) == {0.5} and len(sequential) == IMAGES
    model, split = served(project, "sigma_0.50", 0.5)
    for row in sequential.to_dict("records"):
        params = {"mode": "sequential", "n": 400, "seed": image_seed(7, row["idx"])}
        answer = model.predict(split[row["idx"]][0][None].numpy(), params=params)
        assert answer.iloc[0].to_dict() == {k: row[k] for k in COLUMNS}
    assert (sequential["n"] < 400).any()  # sequential CERTIFY stopped early: not fixed-n's rows


def log_of(project: Path, partition: str) -> list[Path]:
    return sorted((project / LOGS).glob(f"{partition}-*.tsv"))


@pytest.mark.slow
def test_an_interrupted_run_resumes_where_it_stopped(project):
    whole = predict(project, "data/01_raw/digits", sigmas=[0.25])
    (log,) = log_of(project, "sigma_0.25")
    assert log.name.endswith("-rank_0_of_1.tsv")
    lines = log.read_text().splitlines(keepends=True)
    assert len(lines) == 1 + IMAGES
    # killed while writing its fourth row: three rows, half of the next
    log.write_text("".join(lines[:4]) + lines[4][:9])
    (project / PREDICTIONS).unlink()
    resumed = predict(project, "data/01_raw/digits", sigmas=[0.25])
    pd.testing.assert_frame_equal(resumed, whole)
    after = log.read_text().splitlines(keepends=True)
    assert after[:4] == lines[:4]  # the rows done before, time column too: not certified again
    assert len(after) == 1 + IMAGES
    # another setting: another fingerprint, a new log; the first one stays as it was
    predict(project, "data/01_raw/digits", sigmas=[0.25], n=60)
    assert len(log_of(project, "sigma_0.25")) == 2 and log.read_text() == "".join(after)


@pytest.mark.slow
def test_torchrun_predictions_equal_one_process(project):
    """`torchrun --nproc_per_node=2 -m kedro run --pipelines=predict`: each process certifies
    every other image into its own log, and the table equals a one-process run's."""
    one_process = predict(project, "data/01_raw/digits.npy", sigmas=[0.5])
    shutil.rmtree(project / LOGS)
    (project / PREDICTIONS).unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KEDRO_DISABLE_TELEMETRY": "1"}
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "kedro", "run"]
    params = "--params=predict.input=data/01_raw/digits.npy,predict.sigmas=[0.5]"
    done = subprocess.run(
        [*command, "--pipelines=predict", "--env=test", params],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    shares = {path.name.rsplit("-", 1)[1]: read_log(path)["idx"].tolist()
              for path in log_of(project, "sigma_0.50")}  # fmt: skip
    assert {name: sorted(idx) for name, idx in shares.items()} == {
        "rank_0_of_2.tsv": [0, 2, 4],
        "rank_1_of_2.tsv": [1, 3],
    }
    torchrun = pd.read_csv(project / PREDICTIONS, keep_default_na=False)
    pd.testing.assert_frame_equal(torchrun, one_process)


@pytest.mark.slow
@pytest.mark.parametrize(
    "params, error, message",
    [
        ({}, ParamsError, r"predict\.input: expected a folder of PNG/JPEG images"),
        ({"input": "data/01_raw/nothing"}, FileNotFoundError, r"nothing does not exist"),
        ({"input": "data/01_raw/mixed"}, ValueError, r"mixed holds 1 file\(s\) that are not PNG"),
        ({"input": "data/01_raw/digits", "sigmas": [2.0]}, FileNotFoundError,
         r"finetuned_models has no sigma_2\.00 for predict\.sigmas \[2\.0\]"),
    ],
)  # fmt: skip
def test_a_run_without_good_input_stops_before_any_work(project, params, error, message):
    shutil.copytree(project / "data/01_raw/digits", project / "data/01_raw/mixed")
    (project / "data/01_raw/mixed/notes.txt").write_text("")
    with pytest.raises(error, match=message):
        run_kedro(project, "predict", "test", params={"predict": params})
    assert not (project / LOGS).exists() and not (project / PREDICTIONS).exists()
