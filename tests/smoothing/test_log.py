import multiprocessing

import numpy as np
import pytest
import torch
from scipy.stats import norm

from dmae_pipeline.io import LockedError, exclusive_lock
from dmae_pipeline.smoothing import (
    LOG_COLUMNS,
    IncompleteCertificationError,
    Smooth,
    certify_dataset,
    image_seed,
    log_files,
    lower_confidence_bound,
    merge_logs,
    merge_shard_logs,
    read_log,
    shard_indices,
)
from dmae_pipeline.smoothing.log import lock_path

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


def assert_same_certificates(log, other):
    assert list(log) == list(other)
    for column in log:
        if column != "time":
            np.testing.assert_array_equal(log[column], other[column], err_msg=column)


def test_rows_are_certificates_of_their_images(smooth, dataset, tmp_path):
    log = run(smooth, dataset, range(10), tmp_path / "log.tsv")
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


def test_resume_after_a_kill_gives_the_uninterrupted_file(smooth, dataset, tmp_path):
    uninterrupted = tmp_path / "uninterrupted.tsv"
    run(smooth, dataset, range(10), uninterrupted)
    resumed = tmp_path / "resumed.tsv"
    run(smooth, dataset, [0, 1, 2, 3], resumed)
    with open(resumed, "a") as f:  # killed while writing the row of image 4
        f.write("4\t2\t-1\t0.0")
    log = run(smooth, dataset, range(10), resumed)
    assert without_time(resumed) == without_time(uninterrupted)
    assert_same_certificates(log, read_log(uninterrupted))
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
    assert_same_certificates(merged, read_log(whole))
    assert without_time(merged_path) == without_time(whole)
    assert_same_certificates(read_log(merged_path), merged)
    np.testing.assert_array_equal(read_log(merged_path)["time"], merged["time"])


def test_repeated_rows_are_kept_once_and_conflicting_ones_refused(smooth, dataset, tmp_path):
    """Two runs that certified the same images write the same certificates at other times."""
    first, second = tmp_path / "first.tsv", tmp_path / "second.tsv"
    run(smooth, dataset, [0, 1, 2], first)
    run(smooth, dataset, [1, 2, 3], second)
    merged = merge_logs([first, second, first])
    assert merged["idx"].tolist() == [0, 1, 2, 3]
    assert_same_certificates(
        {c: merged[c][1:3] for c in merged}, {c: v[1:] for c, v in read_log(first).items()}
    )
    lines = second.read_text().splitlines()
    fields = lines[1].split("\t")
    fields[2] = "-1" if fields[2] != "-1" else "0"  # image 1's prediction, changed
    second.write_text("\n".join([lines[0], "\t".join(fields), *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match="disagree about image idx 1"):
        merge_logs([first, second])


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
        expected = rf"pid {holder.pid}\) is using the certification log"
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


RADII = (0.0, 0.1, 0.2)


def run_sequential(smooth, dataset, indices, path, **kwargs):
    return certify_dataset(
        smooth, dataset, indices, N0, 2000, ALPHA, BATCH, path, SEED, radii=RADII,
        progress=False, **kwargs,
    )  # fmt: skip


def sorted_rows(path) -> list[list[str]]:
    """A log's rows without time, sorted by idx (sequential rows come in the order they finish)."""
    return sorted(without_time(path)[1:], key=lambda row: int(row[0]))


def test_sequential_rows_are_the_pooled_certificates_of_their_images(smooth, dataset, tmp_path):
    log = run_sequential(smooth, dataset, range(10), tmp_path / "log.tsv")
    assert tuple(log) == LOG_COLUMNS and sorted(log["idx"].tolist()) == list(range(10))
    assert (log["estimation"] == "sequential").all() and (log["n_max"] == 2000).all()
    items = [
        (idx, image, torch.Generator().manual_seed(image_seed(SEED, idx)))
        for idx, (image, _) in enumerate(dataset)
    ]
    certificates = dict(smooth.certify_many(items, N0, 2000, ALPHA, BATCH, RADII))
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
    certificates = dict(smooth.certify_many(items, N0, 2000, ALPHA, BATCH, RADII))
    missed = {idx for idx, cert in certificates.items() if cert.c_hat != labels[idx]}
    assert 0 < len(missed) < 10, "the fixture should mix hits and misses of selection"
    skipped = log["estimation"] == "skipped"
    assert set(log["idx"][skipped].tolist()) == missed
    assert (log["n"][skipped] == 0).all() and (log["predict"][skipped] == -1).all()
    assert (log["correct"][skipped] == 0).all() and (log["n"][~skipped] > 0).all()
    with pytest.raises(ValueError, match="sequential CERTIFY only"):
        certify_dataset(
            smooth, dataset, [0], N0, N, ALPHA, BATCH, tmp_path / "new.tsv", SEED,
            stop_at_selection=True,
        )  # fmt: skip


def test_refuses_a_log_of_another_estimation_or_sequential_test(smooth, dataset, tmp_path):
    fixed, sequential = tmp_path / "fixed.tsv", tmp_path / "sequential.tsv"
    run(smooth, dataset, [0, 1], fixed)
    run_sequential(smooth, dataset, [0, 1, 2, 3], sequential, stop_at_selection=True)
    assert "skipped" in read_log(sequential)["estimation"]
    with pytest.raises(ValueError, match="holds rows of fixed estimation, but this run writes"):
        run_sequential(smooth, dataset, [2], fixed)
    with pytest.raises(
        ValueError,
        match="holds rows of sequential and skipped estimation, but this run writes fixed",
    ):
        run(smooth, dataset, [4], sequential)
    with pytest.raises(ValueError, match="rows of skipped estimation, but this run writes sequen"):
        run_sequential(smooth, dataset, [4], sequential)
    with pytest.raises(ValueError, match=r"another alpha or radii than 0\.05 and \[0\.0, 0\.1\]"):
        certify_dataset(
            smooth, dataset, [4], N0, 2000, ALPHA, BATCH, sequential, SEED, radii=(0.0, 0.1),
            stop_at_selection=True,
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"n=\[2000\], not n=3000"):
        certify_dataset(
            smooth, dataset, [4], N0, 3000, ALPHA, BATCH, sequential, SEED, radii=RADII,
            stop_at_selection=True,
        )  # fmt: skip
    assert len(read_log(sequential)["idx"]) == 4


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


def test_merged_shard_logs_hold_every_image_of_the_shards(smooth, dataset, tmp_path):
    shards = [shard_indices(10, 2, None, i, 2) for i in range(2)]  # [0, 4, 8], [2, 6]
    whole = tmp_path / "whole.tsv"
    run_sequential(smooth, dataset, range(10), whole)
    parts = [tmp_path / f"part{i}.tsv" for i in range(3)]
    for part, indices in zip(parts, ([0, 6], [8, 4], [2, 3]), strict=True):
        run_sequential(smooth, dataset, indices, part)
    merged = merge_shard_logs(parts, shards)
    assert merged["idx"].tolist() == [0, 2, 4, 6, 8]  # image 3 is not selected
    assert_same_certificates(merged, merge_shard_logs([whole], shards))
    incomplete = r"2 shard\(s\) is incomplete \(shard 0 lacks 2 of 3, shard 1 lacks 1 of 2\)"
    with pytest.raises(IncompleteCertificationError, match=incomplete):
        merge_shard_logs(parts[:1], shards)
    with pytest.raises(IncompleteCertificationError, match=r"shard 0 lacks 3 of 3"):
        merge_shard_logs([], shards[:1])
    fixed = tmp_path / "fixed.tsv"
    run(smooth, dataset, [1], fixed)
    with pytest.raises(ValueError, match="mix fixed and sequential estimation"):
        merge_logs([parts[0], fixed])
