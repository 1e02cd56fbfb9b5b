import dataclasses
import multiprocessing
import time

import numpy as np
import pytest
import torch
from scipy.stats import norm

from dmae_pipeline.io import LockedError, exclusive_lock
from dmae_pipeline.smoothing import (
    LOG_COLUMNS,
    CertifySettings,
    Smooth,
    certify_dataset,
    certify_many,
    fingerprint,
    image_seed,
    log_files,
    lower_confidence_bound,
    read_log,
    shard_indices,
)
from dmae_pipeline.smoothing.log import lock_path

from .certifying import (
    ALPHA,
    BATCH,
    FIXED,
    N0,
    RADII,
    SEED,
    SEQUENTIAL,
    SIGMA,
    N,
    run,
    run_sequential,
    without_time,
)
from .toys import ConstantModel, LinearModel

IMAGE_SEED_11_6 = 3542400507103910181
FIXED_FINGERPRINT, SEQUENTIAL_FINGERPRINT = "50fe862298a2", "9404f7155a3a"  # of MODEL and DATA


def sorted_rows(path) -> list[list[str]]:
    """A log's rows without time, sorted by idx (sequential rows come in the order they finish)."""
    return sorted(without_time(path)[1:], key=lambda row: int(row[0]))


def test_rows_are_certificates_of_their_images(smooth, dataset, tmp_path, capsys):
    started = time.perf_counter()
    log = certify_dataset(smooth, dataset, range(10), FIXED, tmp_path / "log.tsv")
    elapsed = time.perf_counter() - started
    assert "log.tsv" in capsys.readouterr().err  # the progress bar, on by default
    assert 0 < log["time"].sum() <= elapsed  # each row's seconds since the one before
    assert tuple(log) == LOG_COLUMNS
    assert (tmp_path / "log.tsv").read_text().splitlines()[0].split("\t") == list(LOG_COLUMNS)
    assert log["idx"].tolist() == list(range(10))
    labels = [int(label) for _, label in dataset]
    assert log["label"].tolist() == labels
    assert (log["correct"] == (log["predict"] == log["label"])).all()
    assert (log["n"] == N).all() and (log["time"] >= 0).all()
    np.testing.assert_array_equal(log["pA_lower"], lower_confidence_bound(log["nA"], N, ALPHA))
    certified = log["predict"] != -1
    assert 0 < certified.sum() < 10, "the fixture should mix certified and abstained images"
    assert (log["pA_lower"][certified] >= 0.5).all() and (log["radius"][~certified] == 0).all()
    np.testing.assert_allclose(
        log["radius"][certified], SIGMA * norm.ppf(log["pA_lower"][certified]), rtol=1e-15
    )
    # each row is the certificate made with the image's own seeded generator
    image, _ = dataset[6]
    generator = torch.Generator().manual_seed(image_seed(SEED, 6))
    cert = smooth.certify_detailed(image, N0, N, ALPHA, BATCH, generator)
    assert [log[c][6] for c in ("predict", "radius", "nA", "pA_lower")] == [
        cert.prediction,
        cert.radius,
        cert.n_a,
        cert.p_a_lower,
    ]


def test_the_log_line_names_the_log_and_no_sigma_of_its_own(smooth, dataset, tmp_path, caplog):
    """The pipelines name a log after its model (sigma_0.50-...): the line spells sigma no other
    way."""
    with caplog.at_level("INFO", logger="dmae_pipeline.smoothing.run"):
        certify_dataset(smooth, dataset, range(3), FIXED, tmp_path / "sigma_0.50-log.tsv")
    assert caplog.messages == [
        f"Certifying 3 images (fixed-n CERTIFY), 0 done before, into {tmp_path}/sigma_0.50-log.tsv"
    ]


def test_resume_after_a_kill_gives_the_uninterrupted_file(smooth, dataset, tmp_path):
    uninterrupted = tmp_path / "uninterrupted.tsv"
    run(smooth, dataset, range(10), uninterrupted)
    resumed = tmp_path / "resumed.tsv"
    run(smooth, dataset, [0, 1, 2, 3], resumed)
    with open(resumed, "a") as f:  # killed while writing the row of image 4
        f.write("4\t2\t-1\t0.0")
    log = run(smooth, dataset, range(10), resumed)
    assert without_time(resumed) == without_time(uninterrupted)
    uninterrupted_log = read_log(uninterrupted)
    for column in log:
        if column != "time":
            np.testing.assert_array_equal(log[column], uninterrupted_log[column], err_msg=column)
    # a finished log is left as it is
    before = resumed.read_text()
    run(smooth, dataset, range(10), resumed)
    assert resumed.read_text() == before


def _hold_lock(path, ready, release):
    with exclusive_lock(path, "the test log"):
        ready.set()
        release.wait(30)


def test_a_second_writer_stops_at_once_while_the_first_holds_the_log(smooth, dataset, tmp_path):
    log = tmp_path / "log.tsv"
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(lock_path(log), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        expected = rf"pid {holder.pid} on .+, `.+`\) is using the certification log"
        with pytest.raises(LockedError, match=expected):
            run(smooth, dataset, [0], log)
        assert not log.exists()
    finally:
        release.set()
        holder.join(30)
    assert run(smooth, dataset, [0], log)["idx"].tolist() == [0]


def test_a_killed_writer_leaves_no_lock_behind(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path / ".x.lock", ready, release))
    holder.start()
    assert ready.wait(60)
    holder.kill()
    holder.join(30)
    with exclusive_lock(tmp_path / ".x.lock", "x"):
        pass


def test_bad_arguments_stop_before_any_work(smooth, dataset, tmp_path):
    with pytest.raises(ValueError, match="outside the dataset"):
        run(smooth, dataset, [10], tmp_path / "new.tsv")
    with pytest.raises(ValueError, match="repeat"):
        run(smooth, dataset, [1, 1], tmp_path / "new.tsv")
    assert not (tmp_path / "new.tsv").exists()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"seed": -1}, "seed"),
        ({"n0": 0}, "n0 must be a positive integer, got 0"),
        ({"n": 2.5}, "n must be a positive integer"),
        ({"alpha": 1.0}, "alpha"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"radii": [-0.5]}, "radii"),
        ({"stop_at_selection": True}, "sequential CERTIFY only"),
    ],
)
def test_settings_refuse_bad_values(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(FIXED, **changes)


def test_settings_hold_plain_values_and_the_batch_lengths():
    settings = CertifySettings(
        *(np.int64(3), np.int64(100), np.float32(0.5), np.int64(8)),
        radii=np.array([0.5, 1]),
        stop_at_selection=np.True_,
        seed=np.int64(2),
    )
    assert settings == CertifySettings(
        3, 100, 0.5, 8, radii=(0.5, 1.0), stop_at_selection=True, seed=2
    )
    types = [type(value) for value in dataclasses.astuple(settings)]
    assert types == [int, int, float, int, tuple, bool, int]
    assert {type(radius) for radius in settings.radii} == {float}
    assert settings.batch_lengths == [8]  # sequential batches are full but a segment's last
    assert FIXED.batch_lengths == [N0, BATCH]  # and fixed-n's selection batch
    assert dataclasses.replace(FIXED, n0=100).batch_lengths == [BATCH]


def test_image_seed_is_a_stable_distinct_hash():
    assert image_seed(0, 5) == image_seed(0, 5)
    # the same from one version to the next, or resumed logs would mix two noise streams
    assert image_seed(11, 6) == IMAGE_SEED_11_6
    seeds = {image_seed(base, idx) for base in range(3) for idx in range(100)}
    assert len(seeds) == 300 and all(0 <= s < 2**64 for s in seeds)
    with pytest.raises(ValueError, match="non-negative"):
        image_seed(0, -1)


def test_shard_indices_split_the_selection():
    assert shard_indices(10) == list(range(10))
    assert shard_indices(50_000, skip=50)[-1] == 49_950
    assert shard_indices(100, skip=7, max_images=5) == [0, 7, 14, 21, 28]
    shards = [shard_indices(101, 3, 30, i, 4) for i in range(4)]
    assert sorted(i for shard in shards for i in shard) == shard_indices(101, 3, 30)
    assert {len(s) for s in shards} == {7, 8}
    for kwargs, match in [
        ({"num_images": 0}, "^num_images must be a positive integer, got 0$"),
        ({"skip": 0}, "^skip must be a positive integer, got 0$"),
        ({"max_images": 0}, "^max_images must be a positive integer, got 0$"),
        ({"shard_index": 4, "num_shards": 4}, "shard_index"),
        ({"num_shards": 0}, "^num_shards must be a positive integer, got 0$"),
    ]:
        with pytest.raises(ValueError, match=match):
            shard_indices(**{"num_images": 10, **kwargs})


def test_sequential_rows_are_the_pooled_certificates_of_their_images(smooth, dataset, tmp_path):
    log = run_sequential(smooth, dataset, range(10), tmp_path / "log.tsv")
    assert tuple(log) == LOG_COLUMNS and sorted(log["idx"].tolist()) == list(range(10))
    assert (log["estimation"] == "sequential").all() and (log["n_max"] == 2000).all()
    items = [
        (idx, image, torch.Generator().manual_seed(image_seed(SEED, idx)))
        for idx, (image, _) in enumerate(dataset)
    ]
    certificates = dict(certify_many(smooth, items, N0, 2000, ALPHA, BATCH, RADII))
    for row in zip(*(log[c] for c in LOG_COLUMNS), strict=True):
        cert = certificates[int(row[0])]
        assert [row[2], row[3], row[6], row[7], row[8]] == [
            cert.prediction, cert.radius, cert.n_a, cert.n, cert.p_a_lower,
        ]  # fmt: skip
    assert len(set(log["n"].tolist())) > 1  # images stop at different looks
    assert (log["correct"] == (log["predict"] == log["label"])).all()


def test_a_sequential_log_resumes_exactly(smooth, dataset, tmp_path):
    uninterrupted = tmp_path / "uninterrupted.tsv"
    run_sequential(smooth, dataset, range(10), uninterrupted)
    resumed = tmp_path / "resumed.tsv"
    run_sequential(smooth, dataset, [7, 2, 5], resumed)
    with open(resumed, "a") as f:  # killed while writing a row
        f.write("4\t2\t-1\t0.0")
    run_sequential(smooth, dataset, range(10), resumed)
    assert sorted_rows(resumed) == sorted_rows(uninterrupted)
    assert without_time(resumed)[0] == list(LOG_COLUMNS[:5] + LOG_COLUMNS[6:])
    before = resumed.read_text()
    run_sequential(smooth, dataset, range(10), resumed)
    assert resumed.read_text() == before


def test_stop_at_selection_skips_images_whose_selection_misses_the_label(smooth, dataset, tmp_path):
    log = run_sequential(smooth, dataset, range(10), tmp_path / "log.tsv", stop_at_selection=True)
    labels = {idx: int(label) for idx, (_, label) in enumerate(dataset)}
    items = [
        (idx, image, torch.Generator().manual_seed(image_seed(SEED, idx)), labels[idx])
        for idx, (image, _) in enumerate(dataset)
    ]
    certificates = dict(certify_many(smooth, items, N0, 2000, ALPHA, BATCH, RADII))
    missed = {idx for idx, cert in certificates.items() if cert.c_hat != labels[idx]}
    assert 0 < len(missed) < 10, "the fixture should mix hits and misses of selection"
    skipped = log["estimation"] == "skipped"
    assert set(log["idx"][skipped].tolist()) == missed
    assert (log["n"][skipped] == 0).all() and (log["predict"][skipped] == -1).all()
    assert (log["correct"][skipped] == 0).all() and (log["n"][~skipped] > 0).all()


def test_images_of_other_logs_are_skipped(smooth, dataset, tmp_path):
    """Logs of the same settings split some other way (other processes, another shard count)."""
    first, second = tmp_path / "a-shard_0_of_2.tsv", tmp_path / "a-shard_1_of_2.tsv"
    run_sequential(smooth, dataset, [0, 2, 4], first)
    run_sequential(smooth, dataset, [1, 3], second)
    third = tmp_path / "a-shard_0_of_1.tsv"
    log = run_sequential(smooth, dataset, range(6), third, others=log_files(tmp_path / "a-"))
    assert log["idx"].tolist() == [5]
    assert log_files(tmp_path / "a-") == [third, first, second]
    assert log_files(tmp_path / "b-") == []


# --- the fingerprint: a log is resumed only by a run that would write its rows ------------------

MODEL = {"config": {"depth": 1}, "weights": {"fc.weight": torch.linspace(-1, 1, 48).view(3, 16)}}
DATA = {"images": torch.linspace(0, 1, 80).view(5, 1, 4, 4), "spec": {}}


def _changed(tree: dict, key: str, value) -> dict:
    return {**tree, key: value}


def _other_weights() -> dict:
    weights = {k: v.clone() for k, v in MODEL["weights"].items()}
    weights["fc.weight"][0, 0] += 1e-6  # a single value, slightly
    return _changed(MODEL, "weights", weights)


def _other_images() -> dict:
    images = DATA["images"].clone()
    images[4, 0, 3, 3] = 0.5
    return _changed(DATA, "images", images)


def _other_runs(smooth):
    """Runs that write other rows than (FIXED, smooth, MODEL, DATA), or than the "mode" run, in
    one thing each."""
    sequential = dataclasses.replace(FIXED, radii=RADII)
    on_meta = Smooth(LinearModel(16, 3).to("meta"), 3, SIGMA)
    return {
        "mode": (sequential, smooth, MODEL, DATA),
        "radii": (dataclasses.replace(sequential, radii=(0.0, 0.1)), smooth, MODEL, DATA),
        "stop": (dataclasses.replace(sequential, stop_at_selection=True), smooth, MODEL, DATA),
        "n0": (dataclasses.replace(FIXED, n0=N0 + 1), smooth, MODEL, DATA),
        "n": (dataclasses.replace(FIXED, n=N + 1), smooth, MODEL, DATA),
        "alpha": (dataclasses.replace(FIXED, alpha=0.01), smooth, MODEL, DATA),
        "seed": (dataclasses.replace(FIXED, seed=SEED + 1), smooth, MODEL, DATA),
        "sigma": (FIXED, Smooth(smooth.model, 3, 0.5), MODEL, DATA),
        "autocast": (
            FIXED,
            Smooth(smooth.model, 3, SIGMA, autocast_dtype=torch.bfloat16),
            MODEL,
            DATA,
        ),
        "device": (FIXED, on_meta, MODEL, DATA),
        "weights": (FIXED, smooth, _other_weights(), DATA),
        "config": (FIXED, smooth, _changed(MODEL, "config", {"depth": 2}), DATA),
        "images": (FIXED, smooth, MODEL, _other_images()),
        "spec": (FIXED, smooth, MODEL, _changed(DATA, "spec", {"mean": [0.5]})),
    }


def forgets_alpha(settings, *args):
    """Wrong on purpose: leaves alpha out."""
    return fingerprint(dataclasses.replace(settings, alpha=0.5), *args)


def forgets_the_data(settings, smooth, model, data):
    """Wrong on purpose: leaves the images out."""
    return fingerprint(settings, smooth, model, {})


def forgets_sigma(settings, smooth, model, data):
    """Wrong on purpose: leaves sigma out."""
    return fingerprint(settings, Smooth(smooth.model, 3, SIGMA), model, data)


@pytest.mark.parametrize(
    ("fingerprint_of", "valid"),
    [
        (fingerprint, True),
        (forgets_alpha, False),
        (forgets_the_data, False),
        (forgets_sigma, False),
    ],
)
def test_the_fingerprint_changes_with_everything_the_rows_depend_on(smooth, fingerprint_of, valid):
    base = fingerprint_of(FIXED, smooth, MODEL, DATA)
    assert len(base) == 12 and base == fingerprint_of(FIXED, smooth, MODEL, DATA)
    others = {name: fingerprint_of(*run) for name, run in _other_runs(smooth).items()}
    assert (len({base, *others.values()}) == 1 + len(others)) == valid, others
    # what only schedules forward passes leaves it alone
    same = dataclasses.replace(FIXED, batch_size=BATCH + 1)
    assert fingerprint_of(same, smooth, MODEL, DATA) == base


def test_what_the_fingerprint_covers_changes_the_rows(smooth, dataset, tmp_path):
    """Each setting in the fingerprint changes some certificate of these 10 images (so a log must
    never be resumed across it); batch_size, which it leaves out, changes none."""
    run(smooth, dataset, range(10), tmp_path / "base.tsv")
    base = sorted_rows(tmp_path / "base.tsv")
    changes = {
        "n0": dataclasses.replace(FIXED, n0=N0 + 1),
        "n": dataclasses.replace(FIXED, n=N + 1),
        "alpha": dataclasses.replace(FIXED, alpha=0.01),
        "seed": dataclasses.replace(FIXED, seed=SEED + 1),
        "batch_size": dataclasses.replace(FIXED, batch_size=BATCH + 1),
    }
    differ = set()
    for name, settings in changes.items():
        path = tmp_path / f"{name}.tsv"
        run(smooth, dataset, range(10), path, settings)
        if sorted_rows(path) != base:
            differ.add(name)
    assert differ == {"n0", "n", "alpha", "seed"}


def test_a_run_resumes_only_the_log_of_its_fingerprint(smooth, dataset, tmp_path):
    def log_path(settings):
        return tmp_path / f"log-{fingerprint(settings, smooth, MODEL, DATA)}.tsv"

    run(smooth, dataset, [0, 1], log_path(FIXED))
    other = dataclasses.replace(FIXED, alpha=0.01)
    assert len(run(smooth, dataset, range(4), log_path(other), other)["idx"]) == 4
    assert read_log(log_path(FIXED))["idx"].tolist() == [0, 1]
    log = run(smooth, dataset, range(4), log_path(dataclasses.replace(FIXED, batch_size=7)))
    assert log["idx"].tolist() == [0, 1, 2, 3] and len(list(tmp_path.glob("*.tsv"))) == 2


def test_the_fingerprint_is_the_same_from_one_version_to_the_next(smooth):
    """A new fingerprint for the same settings orphans every log certified so far; when the rows
    change, rename ``NOISE_LAYOUT`` or ``SEQUENTIAL_TEST`` instead."""
    assert fingerprint(FIXED, smooth, MODEL, DATA) == FIXED_FINGERPRINT
    assert fingerprint(SEQUENTIAL, smooth, MODEL, DATA) == SEQUENTIAL_FINGERPRINT
    # the device of a model without parameters is the CPU
    no_parameters = Smooth(ConstantModel(3, 0), 3, SIGMA)
    assert fingerprint(FIXED, no_parameters, MODEL, DATA) == FIXED_FINGERPRINT
    with pytest.raises(TypeError, match="JSON values and tensors"):
        fingerprint(FIXED, smooth, MODEL, {"images": object()})


def test_a_model_without_parameters_certifies_on_the_cpu(dataset, tmp_path):
    smooth = Smooth(ConstantModel(3, 1), 3, SIGMA)
    log = run(smooth, dataset, [0, 1], tmp_path / "log.tsv")
    assert log["predict"].tolist() == [1, 1] and (log["nA"] == N).all()
