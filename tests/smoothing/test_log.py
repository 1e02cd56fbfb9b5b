import dataclasses

import numpy as np
import pytest

from dmae_pipeline.smoothing import (
    LOG_COLUMNS,
    UNLABELLED_LOG_COLUMNS,
    IncompleteCertificationError,
    certify_dataset,
    merge_logs,
    merge_shard_logs,
    read_log,
    shard_indices,
)

from .certifying import FIXED, SEQUENTIAL, run, run_sequential, without_time


def assert_same_certificates(log, other):
    assert list(log) == list(other)
    for column in log:
        if column != "time":
            np.testing.assert_array_equal(log[column], other[column], err_msg=column)


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
    # a repeated row is kept as the first log given has it
    np.testing.assert_array_equal(merged["time"][:3], read_log(first)["time"])
    assert merge_logs([second, first])["time"][1] == read_log(second)["time"][0]
    assert_same_certificates(
        {c: merged[c][1:3] for c in merged}, {c: v[1:] for c, v in read_log(first).items()}
    )
    lines = second.read_text().splitlines()
    fields = lines[1].split("\t")
    fields[9] = str(int(fields[9]) + 1)  # image 1's n_max, changed
    second.write_text("\n".join([lines[0], "\t".join(fields), *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match="disagree about image idx 1"):
        merge_logs([first, second])
    fields = lines[2].split("\t")
    fields[6] = str(int(fields[6]) - 1)  # image 2's nA, changed
    second.write_text("\n".join([lines[0], lines[1], "\t".join(fields), *lines[3:]]) + "\n")
    with pytest.raises(ValueError, match="disagree about image idx 2"):
        merge_logs([first, second])


def test_reads_a_cohen_log(tmp_path):
    path = tmp_path / "cohen.tsv"
    path.write_text(
        "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
        "0\t3\t3\t0.512\t1\t0:00:01.503211\n"
        "20\t8\t-1\t0.0\t0\t0:00:01.498100\n"
    )
    log = read_log(path)
    assert log["radius"].tolist() == [0.512, 0.0] and log["correct"].tolist() == [1, 0]
    assert log["time"].tolist() == ["0:00:01.503211", "0:00:01.498100"]


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
    longer = tmp_path / "longer.tsv"
    certify_dataset(smooth, dataset, [2], dataclasses.replace(FIXED, n=65), longer, progress=False)
    with pytest.raises(ValueError, match=r"mix n=\[64, 65\]"):
        merge_logs([fixed, longer])


def test_an_empty_log_has_the_columns_types(smooth, dataset, tmp_path):
    path = tmp_path / "log.tsv"
    path.touch()  # an empty file, as a process killed before the header leaves it
    assert run(smooth, dataset, [], path)["idx"].tolist() == []
    assert path.read_text() == "\t".join(LOG_COLUMNS) + "\n"
    for log in (read_log(path), merge_shard_logs([], [[]])):
        kinds = {column: values.dtype.kind for column, values in log.items()}
        assert kinds == {**dict.fromkeys(LOG_COLUMNS, "i"), "radius": "f", "time": "f",
                         "pA_lower": "f", "estimation": "U"}  # fmt: skip


def test_refuses_a_file_of_another_format(smooth, dataset, tmp_path):
    other = tmp_path / "other.tsv"
    other.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match=r"other\.tsv is not a certification log"):
        run(smooth, dataset, [0], other)
    with pytest.raises(FileNotFoundError, match=r"missing\.tsv"):
        read_log(tmp_path / "missing.tsv")
    cohen = tmp_path / "cohen.tsv"
    cohen.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.5\t1\t0:00:01\n")
    with pytest.raises(ValueError, match=r"cohen\.tsv has columns \['idx', .*'time'\], expected"):
        run(smooth, dataset, [0], cohen)
    with pytest.raises(ValueError, match=r"cohen\.tsv has columns"):
        merge_logs([cohen])
    assert read_log(cohen)["idx"].tolist() == [0]
    log = tmp_path / "log.tsv"
    run(smooth, dataset, [0, 1], log)
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], lines[1] + "\t1", lines[2]]) + "\n")
    with pytest.raises(ValueError, match=r"log\.tsv line 2 has 12 fields, not 11"):
        read_log(log)
    log.write_text("\n".join([lines[0], lines[1].replace("\t", "\tx", 1), lines[2]]) + "\n")
    with pytest.raises(ValueError, match=r"log\.tsv has a malformed row"):
        read_log(log)


def edited(path, idx, columns=LOG_COLUMNS, **values) -> int:
    """Change the cells of ``values`` (column=value) in image ``idx``'s row; return its line."""
    lines = path.read_text().splitlines()
    line = next(i for i, text in enumerate(lines[1:], start=2) if text.startswith(f"{idx}\t"))
    fields = dict(zip(columns, lines[line - 1].split("\t"), strict=True)) | values
    lines[line - 1] = "\t".join(str(fields[c]) for c in columns)
    path.write_text("\n".join(lines) + "\n")
    return line


@pytest.mark.parametrize(
    "settings", [FIXED, dataclasses.replace(SEQUENTIAL, stop_at_selection=True)]
)
def test_rows_that_certify_cannot_write_are_refused_naming_file_and_line(
    smooth, dataset, tmp_path, settings
):
    log = tmp_path / "log.tsv"
    rows = certify_dataset(smooth, dataset, range(10), settings, log, progress=False)
    assert merge_logs([log], sigma=0.25)["idx"].tolist() == list(range(10))  # as written: kept
    wrong = (rows["correct"] == 0).nonzero()[0][0]
    certified = (rows["predict"] != -1).nonzero()[0][0]
    abstained = (rows["predict"] == -1).nonzero()[0][0]
    radius = rows["radius"][certified]
    cases = [
        (wrong, {"correct": 1}, "never correct|correct must be predict==label"),
        (certified, {"correct": 1 - rows["correct"][certified]}, "correct must be"),
        (certified, {"radius": radius + 1e-3}, r"radius must be sigma \* Phi\^-1\(pA_lower\)"),
        (certified, {"pA_lower": 0.4, "radius": 0.0}, "pA_lower >= 0.5"),
        (abstained, {"radius": 0.1}, "an abstention has radius 0"),
    ]
    for row, values, message in cases:
        copy = tmp_path / f"copy{row}.tsv"
        copy.write_text(log.read_text())
        line = edited(copy, rows["idx"][row], **values)
        with pytest.raises(ValueError, match=rf"copy{row}\.tsv line {line}: .*({message})"):
            merge_logs([copy], sigma=0.25)
    with pytest.raises(ValueError, match="radius must be"):  # the same log, another sigma
        merge_shard_logs([log], [range(10)], sigma=0.5)
    # the log's floats written to 7 digits: still its certificates
    short = tmp_path / "short.tsv"
    short.write_text(log.read_text())
    edited(short, rows["idx"][certified], radius=f"{radius:.7g}")
    merged = merge_logs([short], sigma=0.25)
    assert merged["radius"][merged["idx"] == rows["idx"][certified]] == float(f"{radius:.7g}")


def test_skipped_rows_are_abstentions_without_estimation(smooth, dataset, tmp_path):
    log = tmp_path / "log.tsv"
    settings = dataclasses.replace(SEQUENTIAL, stop_at_selection=True)
    rows = certify_dataset(smooth, dataset, range(10), settings, log, progress=False)
    skipped = (rows["estimation"] == "skipped").nonzero()[0]
    assert len(skipped), "the toy model should miss some labels at selection"
    for values, message in [
        ({"n": 5, "nA": 5}, "a skipped image has n = nA = 0"),
        ({"predict": rows["label"][skipped[0]], "correct": 1}, "skipped image .* has predict -1"),
    ]:
        copy = tmp_path / "copy.tsv"
        copy.write_text(log.read_text())
        line = edited(copy, rows["idx"][skipped[0]], **values)
        with pytest.raises(ValueError, match=rf"copy\.tsv line {line}: .*{message}"):
            merge_logs([copy], sigma=0.25)


def test_unlabelled_logs_have_their_radii_checked(smooth, dataset, tmp_path):
    log = tmp_path / "log.tsv"
    columns = UNLABELLED_LOG_COLUMNS
    rows = certify_dataset(smooth, dataset, range(10), FIXED, log, progress=False, labelled=False)
    assert merge_logs([log], columns=columns, sigma=0.25)["idx"].tolist() == list(range(10))
    certified = (rows["predict"] != -1).nonzero()[0][0]
    line = edited(log, rows["idx"][certified], columns, radius=rows["radius"][certified] * 2)
    with pytest.raises(ValueError, match=rf"log\.tsv line {line}: radius must be"):
        merge_logs([log], columns=columns, sigma=0.25)
