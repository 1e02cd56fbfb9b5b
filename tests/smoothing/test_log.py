import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from dmae_pipeline.smoothing import (
    LOG_COLUMNS,
    Smooth,
    certify_dataset,
    image_seed,
    lower_confidence_bound,
    merge_logs,
    read_log,
    shard_indices,
)

from .toys import LinearModel

N0, N, ALPHA, BATCH, SEED, SIGMA = 16, 64, 0.05, 24, 11, 0.25


@pytest.fixture
def dataset():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(10, 1, 4, 4, generator=generator)
    labels = torch.randint(0, 3, (10,), generator=generator)
    return list(zip(images, labels, strict=True))


@pytest.fixture
def smooth():
    return Smooth(LinearModel(16, 3), 3, sigma=SIGMA)


def run(smooth, dataset, indices, path):
    return certify_dataset(
        smooth, dataset, indices, N0, N, ALPHA, BATCH, path, SEED, progress=False
    )


def without_time(path) -> list[list[str]]:
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    return [row[:5] + row[6:] for row in rows]


def test_rows_are_certificates_of_their_images(smooth, dataset, tmp_path):
    log = run(smooth, dataset, range(10), tmp_path / "log.tsv")
    assert tuple(log.columns) == LOG_COLUMNS
    assert (tmp_path / "log.tsv").read_text().splitlines()[0].split("\t") == list(LOG_COLUMNS)
    assert log["idx"].tolist() == list(range(10))
    labels = [int(label) for _, label in dataset]
    assert log["label"].tolist() == labels
    assert (log["correct"] == (log["predict"] == log["label"])).all()
    assert (log["n"] == N).all() and (log["time"] >= 0).all()
    np.testing.assert_array_equal(
        log["pA_lower"], lower_confidence_bound(log["nA"].to_numpy(), N, ALPHA)
    )
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
    assert log.loc[6, ["predict", "radius", "nA", "pA_lower"]].tolist() == [
        cert.prediction,
        cert.radius,
        cert.n_a,
        cert.p_a_lower,
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
    pd.testing.assert_frame_equal(
        log.drop(columns="time"), read_log(uninterrupted).drop(columns="time")
    )
    # a finished log is left as it is
    before = resumed.read_text()
    run(smooth, dataset, range(10), resumed)
    assert resumed.read_text() == before


def test_merged_shards_equal_the_unsharded_run(smooth, dataset, tmp_path):
    whole = tmp_path / "whole.tsv"
    run(smooth, dataset, shard_indices(10, skip=2), whole)
    shards = [tmp_path / f"shard{i}.tsv" for i in range(3)]
    for i, shard in enumerate(shards):
        run(smooth, dataset, shard_indices(10, skip=2, shard_index=i, num_shards=3), shard)
    merged_path = tmp_path / "merged.tsv"
    merged = merge_logs(reversed(shards), merged_path)
    assert merged["idx"].tolist() == [0, 2, 4, 6, 8]
    pd.testing.assert_frame_equal(merged.drop(columns="time"), read_log(whole).drop(columns="time"))
    assert without_time(merged_path) == without_time(whole)
    pd.testing.assert_frame_equal(read_log(merged_path), merged)
    with pytest.raises(ValueError, match="overlap"):
        merge_logs([shards[0], shards[0]])


def test_refuses_a_log_of_other_settings_or_format(smooth, dataset, tmp_path):
    path = tmp_path / "log.tsv"
    run(smooth, dataset, [0, 1], path)
    with pytest.raises(ValueError, match="n=\\[64\\], not n=65"):
        certify_dataset(smooth, dataset, [2], N0, N + 1, ALPHA, BATCH, path, SEED, progress=False)
    with pytest.raises(ValueError, match=r"another alpha than 0\.01"):
        certify_dataset(smooth, dataset, [2], N0, N, 0.01, BATCH, path, SEED, progress=False)
    other_sigma = Smooth(smooth.model, 3, sigma=0.5)
    with pytest.raises(ValueError, match=r"another sigma than 0\.5"):
        certify_dataset(other_sigma, dataset, [2], N0, N, ALPHA, BATCH, path, SEED, progress=False)
    assert read_log(path)["idx"].tolist() == [0, 1]
    other = tmp_path / "other.tsv"
    other.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="not a certification log"):
        run(smooth, dataset, [0], other)
    with pytest.raises(FileNotFoundError, match=r"missing\.tsv"):
        read_log(tmp_path / "missing.tsv")
    with pytest.raises(ValueError, match="outside the dataset"):
        run(smooth, dataset, [10], tmp_path / "new.tsv")
    with pytest.raises(ValueError, match="repeat"):
        run(smooth, dataset, [1, 1], tmp_path / "new.tsv")
    with pytest.raises(ValueError, match="base_seed"):
        certify_dataset(smooth, dataset, [0], N0, N, ALPHA, BATCH, tmp_path / "new.tsv", -1)
    assert not (tmp_path / "new.tsv").exists()


def test_reads_a_cohen_log(tmp_path):
    path = tmp_path / "cohen.tsv"
    path.write_text(
        "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
        "0\t3\t3\t0.512\t1\t0:00:01.503211\n"
        "20\t8\t-1\t0.0\t0\t0:00:01.498100\n"
    )
    log = read_log(path)
    assert log["radius"].tolist() == [0.512, 0.0] and log["correct"].tolist() == [1, 0]


def test_image_seed_is_a_stable_distinct_hash():
    assert image_seed(0, 5) == image_seed(0, 5)
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
        ({"skip": 0}, "skip"),
        ({"max_images": 0}, "max_images"),
        ({"shard_index": 4, "num_shards": 4}, "shard_index"),
        ({"num_shards": 0}, "num_shards"),
    ]:
        with pytest.raises(ValueError, match=match):
            shard_indices(10, **kwargs)
