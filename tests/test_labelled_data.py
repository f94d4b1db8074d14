"""The labelled-data reader layer (`seqserve.labelled`): every input form, both tasks, bad data, hold-out.

Archive data sets other than JapaneseVowels (BasicMotions: multivariate classification; Covid3Month:
regression; PickupGestureWiimoteZ: unequal lengths) are written out in every form the reader takes and
read back; each must give the same sequences, ids, labels or targets as the archive's own .ts file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqserve.batch.readers import each_record, read_records
from seqserve.datasets import archive_names, archive_path
from seqserve.labelled import (
    FILLS,
    DataError,
    LabelledSet,
    check_split,
    fill_missing,
    hold_out_rows,
    read_labelled,
    split,
)

FORMS = ("ts", "jsonl", "parquet", "npz", "csv")
SETS = ("BasicMotions", "Covid3Month", "PickupGestureWiimoteZ")


# ---------------------------------------------------------------- writers of every form


def _number(value: float) -> str:
    return repr(float(value))  # float32 -> shortest text that reads back to the same float32


def _answer(data: LabelledSet, row: int) -> str | float | list[float]:
    if data.labels is not None:
        return data.labels[row]
    assert data.targets is not None
    target = data.targets[row].tolist()
    return target[0] if len(target) == 1 else target


def write_ts(data: LabelledSet, path: Path) -> Path:
    equal = len({len(s) for s in data.sequences}) == 1
    answer = f"@ClassLabel true {' '.join(data.classes)}" if data.task == "classify" else "@TargetLabel true"
    lines = ["# written by the test", "@ProblemName test", f"@Dimensions {data.features}",
             f"@EqualLength {str(equal).lower()}", answer, "@Data"]
    for row, steps in enumerate(data.sequences):
        dims = [",".join(map(_number, steps[:, f])) for f in range(steps.shape[1])]
        lines.append(":".join([*dims, str(_answer(data, row))]))
    path.write_text("\n".join(lines) + "\n")
    return path


def _answer_key(data: LabelledSet) -> str:
    return "label" if data.task == "classify" else "target"


def write_jsonl(data: LabelledSet, path: Path) -> Path:
    with path.open("w") as f:
        for row, steps in enumerate(data.sequences):
            record = {"id": data.ids[row], "steps": steps.tolist(), _answer_key(data): _answer(data, row)}
            f.write(json.dumps(record) + "\n")
    return path


def write_parquet(data: LabelledSet, path: Path) -> Path:
    answers = [_answer(data, row) for row in range(len(data))]
    table = pa.table({"id": data.ids, "steps": [s.tolist() for s in data.sequences], _answer_key(data): answers})
    pq.write_table(table.cast(table.schema.set(1, pa.field("steps", pa.list_(pa.list_(pa.float32()))))), path)
    return path


def write_npz(data: LabelledSet, path: Path) -> Path:
    answers = {"labels": np.array(data.labels)} if data.labels is not None else {"targets": data.targets}
    np.savez_compressed(path, steps=np.concatenate(data.sequences), lengths=[len(s) for s in data.sequences],
                        ids=np.array(data.ids), **answers)
    return path


def _csv_answers(data: LabelledSet, row: int) -> tuple[list[str], list[str]]:
    """(column names, cells) of a sequence's answer: `label`, `target`, or target_0.. for a vector target."""
    if data.targets is None or data.targets.shape[1] == 1:
        return [_answer_key(data)], [str(_answer(data, row))]
    return [f"target_{k}" for k in range(data.targets.shape[1])], list(map(_number, data.targets[row]))


def write_csv(data: LabelledSet, path: Path) -> Path:
    """Long form, one row per step: each id's first step in id order, then every other step shuffled (the
    reader orders an id's steps by t, the ids by first appearance)."""
    firsts, rest = [], []
    for row, steps in enumerate(data.sequences):
        cells = _csv_answers(data, row)[1]
        for t, step in enumerate(steps):
            (rest if t else firsts).append(",".join([data.ids[row], str(t), *map(_number, step), *cells]))
    rows = firsts + [rest[i] for i in np.random.default_rng(0).permutation(len(rest))]
    header = ["id", "t", *data.feature_names, *_csv_answers(data, 0)[0]]
    path.write_text(",".join(header) + "\n" + "\n".join(rows) + "\n")
    return path


WRITERS = {"ts": write_ts, "jsonl": write_jsonl, "parquet": write_parquet, "npz": write_npz, "csv": write_csv}


@pytest.fixture(scope="module", params=SETS)
def archive(request) -> LabelledSet:
    return read_labelled(archive_path(request.param, "TRAIN"))


def assert_same(read: LabelledSet, expected: LabelledSet) -> None:
    assert read.task == expected.task
    assert read.ids == expected.ids
    assert read.feature_names == expected.feature_names
    assert len(read.sequences) == len(expected.sequences)
    for got, want in zip(read.sequences, expected.sequences, strict=True):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert read.labels == expected.labels
    if expected.targets is None:
        assert read.targets is None
    else:
        assert read.targets is not None and read.targets.dtype == np.float32
        np.testing.assert_array_equal(read.targets, expected.targets)


# ---------------------------------------------------------------- every form reads the same sequences


@pytest.mark.parametrize("form", FORMS)
def test_every_form_reads_the_archive_sequences_identically(archive, form, tmp_path):
    path = WRITERS[form](archive, tmp_path / f"data.{form}")
    assert_same(read_labelled(path), archive)


@pytest.mark.parametrize("form", ["jsonl", "parquet", "npz", "csv"])  # .ts holds one target per case
def test_every_form_reads_vector_targets_and_unequal_lengths_identically(form, tmp_path):
    rng = np.random.default_rng(7)
    lengths = [1, 5, 3, 8]
    data = LabelledSet(sequences=[rng.normal(size=(n, 3)).astype(np.float32) for n in lengths],
                       ids=["p", "q", "r", "s"], task="regress", labels=None,
                       targets=rng.normal(size=(4, 2)).astype(np.float32), feature_names=["f0", "f1", "f2"],
                       source="generated")
    assert_same(read_labelled(WRITERS[form](data, tmp_path / f"vector.{form}")), data)


def test_the_archive_sets_read_as_their_task_with_their_shapes():
    motions = read_labelled(archive_path("BasicMotions", "TRAIN"))
    assert (motions.task, len(motions), motions.features) == ("classify", 40, 6)
    assert motions.classes == ["Badminton", "Running", "Standing", "Walking"]
    assert {s.shape for s in motions.sequences} == {(100, 6)}
    covid = read_labelled(archive_path("Covid3Month", "TEST"))  # lower-case header keys: @targetlabel true
    assert (covid.task, len(covid), covid.features, covid.labels) == ("regress", 61, 1, None)
    assert covid.targets is not None and covid.targets.shape == (61, 1)
    gestures = read_labelled(archive_path("PickupGestureWiimoteZ", "TRAIN"))
    lengths = [len(s) for s in gestures.sequences]
    assert (min(lengths), max(lengths)) == (29, 361)  # unequal lengths, kept as they are
    assert gestures.classes == [str(c) for c in range(1, 11)]  # numbers sort by value: "2" before "10"


def test_a_folder_of_parquet_files_reads_as_one_set(tmp_path):
    motions = read_labelled(archive_path("BasicMotions", "TRAIN"))
    folder = tmp_path / "parts"
    folder.mkdir()
    write_parquet(motions.subset(range(25)), folder / "a.parquet")
    write_parquet(motions.subset(range(25, 40)), folder / "b.parquet")
    assert_same(read_labelled(folder), motions)


def test_csv_rows_in_any_order_give_each_id_its_steps_in_time_order(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("id,t,accel,gyro,label\n"
                    "b,2,5.0,50.0,walk\n"
                    "a,1,2.0,20.0,run\n"
                    "b,0,3.0,30.0,walk\n"
                    "a,0,1.0,10.0,run\n"
                    "b,1,4.0,40.0,walk\n")
    data = read_labelled(path)
    assert data.ids == ["b", "a"]  # order of first appearance
    assert data.feature_names == ["accel", "gyro"]
    np.testing.assert_array_equal(data.sequences[0], [[3, 30], [4, 40], [5, 50]])
    np.testing.assert_array_equal(data.sequences[1], [[1, 10], [2, 20]])
    assert data.labels == ["walk", "run"] and data.lines == [2, 3]


def test_csv_times_may_be_timestamps(tmp_path):
    path = tmp_path / "stamps.csv"
    path.write_text("id,t,x,target\nm1,2026-01-02T00:00:00,2.5,7\nm1,2026-01-01T00:00:00,1.5,7\n")
    data = read_labelled(path)
    np.testing.assert_array_equal(data.sequences[0], [[1.5], [2.5]])
    assert data.targets.tolist() == [[7.0]]


def test_csv_times_keep_float64_precision(tmp_path):
    path = tmp_path / "epoch.csv"  # one step apart at 1.7e9 s: the same float32, different float64
    path.write_text("id,t,x,label\na,1700000000.5,2,p\na,1700000000.25,1,p\n")
    np.testing.assert_array_equal(read_labelled(path).sequences[0], [[1], [2]])


def test_a_csv_cell_that_is_not_a_number(tmp_path):
    path = tmp_path / "text.csv"
    path.write_text("id,t,x,label\na,0,1.5,p\na,1,high,p\n")
    assert _message(path) == f"{path}: line 3: field 'x': 'high' is not a number"


def test_csv_target_columns_make_a_vector_target(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text("id,t,x,target_low,target_high\n1,0,0.5,1.0,2.0\n1,1,0.7,1.0,2.0\n2,0,0.1,-1,3\n")
    data = read_labelled(path)
    assert data.task == "regress"
    np.testing.assert_array_equal(data.targets, [[1.0, 2.0], [-1.0, 3.0]])


def test_jsonl_list_targets_are_read_as_vectors(tmp_path):
    path = tmp_path / "vec.jsonl"
    path.write_text('{"steps": [[1], [2]], "target": [0.5, 1.5]}\n{"steps": [[3]], "target": [2, 3]}\n')
    data = read_labelled(path)
    assert data.ids == ["0", "1"]
    np.testing.assert_array_equal(data.targets, np.array([[0.5, 1.5], [2, 3]], np.float32))


def test_the_batch_readers_carry_the_targets_of_every_form(tmp_path):
    covid = read_labelled(archive_path("Covid3Month", "TRAIN")).subset(range(5))
    for form in FORMS:
        records = list(each_record(read_records(WRITERS[form](covid, tmp_path / f"c.{form}"))))
        assert [float(np.ravel(np.asarray(r.target, dtype=np.float32))[0]) for r in records] == \
            covid.targets[:, 0].tolist(), form


# ---------------------------------------------------------------- the task: from the data, or forced


def test_a_forced_task_converts_the_answer(tmp_path):
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text('{"steps": [[1.0]], "label": 2}\n{"steps": [[2.0]], "label": 10}\n')
    assert read_labelled(numbers).labels == ["2", "10"]
    as_regress = read_labelled(numbers, task="regress")
    assert as_regress.task == "regress" and as_regress.targets.tolist() == [[2.0], [10.0]]
    covid = read_labelled(archive_path("Covid3Month", "TRAIN"), task="classify")
    assert covid.task == "classify" and covid.labels is not None and len(covid.classes) > 2


def test_a_file_with_both_labels_and_targets_needs_the_task(tmp_path):
    path = tmp_path / "both.jsonl"
    path.write_text('{"steps": [[1.0]], "label": "a", "target": 1.5}\n')
    with pytest.raises(DataError, match="both 'label' and 'target'"):
        read_labelled(path)
    assert read_labelled(path, task="regress").targets.tolist() == [[1.5]]
    assert read_labelled(path, task="classify").labels == ["a"]


# ---------------------------------------------------------------- bad data: one DataError naming file, place, field


def _message(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        read_labelled(path, **kwargs)
    return str(caught.value)


def test_a_missing_file(tmp_path):
    assert _message(tmp_path / "absent.ts") == f"{tmp_path / 'absent.ts'}: no such file"


def test_an_unknown_extension(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("1,2,3\n")
    message = _message(path)
    assert message.startswith(f"{path}: unknown extension '.txt'") and ".csv" in message and ".ts" in message


def test_records_with_different_feature_counts(tmp_path):
    path = tmp_path / "widths.jsonl"
    path.write_text('{"steps": [[1, 2]], "label": "a"}\n{"steps": [[1, 2, 3]], "label": "b"}\n')
    assert _message(path) == f"{path}: line 2: field 'steps': 3 features per step, the first sequence has 2"


def test_nan_and_inf(tmp_path):
    path = tmp_path / "inf.jsonl"
    path.write_text('{"steps": [[1, 2]], "label": "a"}\n\n{"steps": [[1, 2], [3, Infinity]], "label": "b"}\n')
    assert _message(path) == f"{path}: line 3: field 'steps': inf at step 1, feature 'f1'"
    table = pa.table({"steps": [[[1.0]], [[2.0], [float("nan")]]], "label": ["a", "b"]})
    pq.write_table(table, tmp_path / "nan.parquet")
    message = _message(tmp_path / "nan.parquet")
    assert message.startswith(f"{tmp_path / 'nan.parquet'}: record 1: field 'steps': missing value")
    assert "step 1, feature 'f0'" in message


def test_inf_is_refused_even_with_a_fill(tmp_path):
    path = tmp_path / "inf.csv"
    path.write_text("id,t,x,label\na,0,1,p\na,1,inf,p\n")
    assert _message(path, fill="ffill") == f"{path}: line 2: field 'steps': inf at step 1, feature 'x'"


def test_an_empty_sequence(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text('{"steps": [[1]], "label": "a"}\n{"id": "e", "steps": [], "label": "b"}\n')
    assert _message(path) == f"{path}: line 2: field 'steps': an empty sequence (0 steps)"


def test_a_non_numeric_target_for_regress(tmp_path):
    path = tmp_path / "target.jsonl"
    path.write_text('{"steps": [[1]], "target": 0.5}\n{"steps": [[2]], "target": "high"}\n')
    assert _message(path) == f"{path}: line 2: field 'target': 'high' is not a number"
    motions = write_ts(read_labelled(archive_path("BasicMotions", "TEST")), tmp_path / "motions.ts")
    assert _message(motions, task="regress") == f"{motions}: line 7: field 'label': 'Standing' is not a number"


def test_targets_of_different_sizes(tmp_path):
    path = tmp_path / "sizes.npz"
    np.savez(path, x=np.ones((2, 3, 1), np.float32), targets=np.array([1.0, 2.0]))
    assert read_labelled(path).targets.shape == (2, 1)
    jsonl = tmp_path / "sizes.jsonl"
    jsonl.write_text('{"steps": [[1]], "target": [1, 2]}\n{"steps": [[2]], "target": [3]}\n')
    assert _message(jsonl) == f"{jsonl}: line 2: field 'target': 1 numbers, the first sequence has 2"


def test_a_missing_label(tmp_path):
    path = tmp_path / "label.jsonl"
    path.write_text('{"steps": [[1]], "label": "a"}\n{"steps": [[2]], "label": "b"}\n{"steps": [[3]]}\n')
    assert _message(path) == f"{path}: line 3: field 'label': missing"
    nothing = tmp_path / "nothing.jsonl"
    nothing.write_text('{"steps": [[1]]}\n')
    assert "field 'label': no sequence has a 'label' (classify) or 'target' (regress)" in _message(nothing)


def test_a_label_that_changes_within_a_csv_id(tmp_path):
    path = tmp_path / "changes.csv"
    path.write_text("id,t,x,label\na,0,1,p\nb,0,1,q\na,1,2,r\n")
    assert _message(path) == f"{path}: line 2: field 'label': changes within the id ('p' at line 2, 'r' at line 4)"


def test_a_repeated_time_within_a_csv_id(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("id,t,x,label\na,0,1,p\na,0,2,p\n")
    assert _message(path) == f"{path}: line 2: field 't': 0 appears twice (lines 2 and 3)"


def test_a_malformed_ts_case_names_its_line(tmp_path):
    path = tmp_path / "bad.ts"
    path.write_text("@problemName x\n@dimensions 2\n@classLabel true a b\n@data\n1,2:3,4:a\n1,2:b\n")
    assert _message(path) == f"{path}: line 6: field 'steps': 1 dimensions, header says 2"


def test_a_single_class_and_an_unseen_test_label(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"steps": [[1]], "label": "a"}\n{"steps": [[2]], "label": "a"}\n')
    with pytest.raises(DataError, match=r"train\.jsonl: field 'label': a single class 'a'"):
        check_split(read_labelled(train), None)
    train.write_text('{"steps": [[1]], "label": "a"}\n{"steps": [[2]], "label": "b"}\n')
    test = tmp_path / "test.jsonl"
    test.write_text('{"steps": [[1]], "label": "b"}\n{"steps": [[2]], "label": "c"}\n')
    with pytest.raises(DataError) as caught:
        check_split(read_labelled(train), read_labelled(test))
    assert str(caught.value) == f"{test}: line 2: field 'label': class 'c' is not in the training file {train} " \
                                "(classes: a, b)"
    check_split(read_labelled(train), read_labelled(train))  # a good pair passes


def test_a_test_file_with_other_features(tmp_path):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text('{"steps": [[1]], "label": "a"}\n{"steps": [[2]], "label": "b"}\n')
    test.write_text('{"steps": [[1, 2]], "label": "a"}\n')
    with pytest.raises(DataError, match=r"test\.jsonl: field 'steps': 2 features per step, the training file"):
        check_split(read_labelled(train), read_labelled(test))


# ---------------------------------------------------------------- missing values: refused, then filled


GAPPY_TS = """@problemName gaps
@univariate true
@equalLength false
@classLabel true a b
@data
1.0,?,3.0,?:a
?,?,5.0,6.0,?:b
"""


def test_missing_values_are_refused_with_their_line_then_filled(tmp_path):
    path = tmp_path / "gaps.ts"
    path.write_text(GAPPY_TS)
    message = _message(path)
    assert message.startswith(f"{path}: line 6: field 'steps': missing value ('?', NaN or empty) at step 1, "
                              "feature 'f0'; pass a fill: ffill, linear, zero")
    filled = {fill: read_labelled(path, fill=fill).sequences for fill in FILLS}
    assert [s[:, 0].tolist() for s in filled["ffill"]] == [[1, 1, 3, 3], [5, 5, 5, 6, 6]]
    assert [s[:, 0].tolist() for s in filled["linear"]] == [[1, 2, 3, 3], [5, 5, 5, 6, 6]]
    assert [s[:, 0].tolist() for s in filled["zero"]] == [[1, 0, 3, 0], [0, 0, 5, 6, 0]]


def test_a_feature_with_no_value_can_only_be_zero_filled(tmp_path):
    path = tmp_path / "hollow.csv"
    path.write_text("id,t,x,y,label\na,0,1,,p\na,1,2,,p\nb,0,3,4,q\n")
    assert _message(path, fill="linear") == (f"{path}: line 2: field 'steps': feature 'y' has no value at all: "
                                             "nothing to fill from (the 'zero' fill can)")
    np.testing.assert_array_equal(read_labelled(path, fill="zero").sequences[0], [[1, 0], [2, 0]])


def test_fills_work_per_feature():
    steps = np.array([[np.nan, 1.0], [2.0, np.nan], [np.nan, 3.0]], np.float32)  # (T=3, F=2)
    np.testing.assert_array_equal(fill_missing(steps, "ffill"), [[2, 1], [2, 1], [2, 3]])
    np.testing.assert_array_equal(fill_missing(steps, "linear"), [[2, 1], [2, 2], [2, 3]])
    assert np.isnan(steps).sum() == 3  # the input is left as it was


def test_unknown_fill_and_task_are_refused(tmp_path):
    path = write_jsonl(read_labelled(archive_path("BasicMotions", "TEST")), tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match="fill: 'mean' is not one of ffill, linear, zero"):
        read_labelled(path, fill="mean")
    with pytest.raises(ValueError, match="task: 'cluster' is not one of classify, regress"):
        read_labelled(path, task="cluster")


# ---------------------------------------------------------------- hold-out split


def test_split_is_stratified_disjoint_and_repeatable():
    data = read_labelled(archive_path("PickupGestureWiimoteZ", "TRAIN"))  # 10 classes of 5
    kept, held = split(data, 0.2, seed=3)
    assert sorted(kept.ids + held.ids, key=int) == data.ids and not set(kept.ids) & set(held.ids)
    assert {label: held.labels.count(label) for label in data.classes} == dict.fromkeys(data.classes, 1)
    assert split(data, 0.2, seed=3)[1].ids == held.ids
    assert split(data, 0.2, seed=4)[1].ids != held.ids
    index = {rid: i for i, rid in enumerate(data.ids)}
    for part in (kept, held):
        rows = [index[rid] for rid in part.ids]
        assert rows == sorted(rows)  # the input's order
        assert all(np.array_equal(part.sequences[k], data.sequences[r]) for k, r in enumerate(rows))
        assert part.labels == [data.labels[r] for r in rows]


def test_a_class_of_one_stays_in_training(tmp_path):
    path = tmp_path / "small.jsonl"
    path.write_text("".join(f'{{"steps": [[{i}]], "label": "{label}"}}\n' for i, label in enumerate("aaaab")))
    kept, held = split(read_labelled(path), 0.5, seed=0)
    assert "b" in kept.labels and held.labels == ["a", "a"]


def test_split_of_a_regression_set_holds_out_the_fraction():
    covid = read_labelled(archive_path("Covid3Month", "TRAIN"))
    kept, held = split(covid, 0.25, seed=0)
    assert (len(kept), len(held)) == (105, 35)
    index = {rid: i for i, rid in enumerate(covid.ids)}
    np.testing.assert_array_equal(held.targets, covid.targets[[index[rid] for rid in held.ids]])
    with pytest.raises(ValueError, match="fraction: 1.0 is not between 0 and 1"):
        split(covid, 1.0, seed=0)


def test_label_indices_follow_the_given_classes():
    data = read_labelled(archive_path("BasicMotions", "TEST"))
    indices = data.label_indices(["Walking", "Standing", "Running", "Badminton"])
    assert [data.labels[i] for i in np.flatnonzero(indices == 0)] == ["Walking"] * 10


# ---------------------------------------------------------------- archive files on disk


def test_archive_paths_are_found_without_importing_aeon():
    code = ("import sys; from seqserve.datasets import archive_path; "
            "print(archive_path('BasicMotions', 'TRAIN')); print(archive_path('PickupGestureWiimoteZ_eq', 'TEST')); "
            "print('aeon' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0].endswith("BasicMotions/BasicMotions_TRAIN.ts") and Path(out[0]).is_file()
    assert out[1].endswith("PickupGestureWiimoteZ/PickupGestureWiimoteZ_eq_TEST.ts")
    assert out[2] == "False"


def test_an_unknown_archive_name_lists_the_known_ones():
    assert {"BasicMotions", "Covid3Month", "JapaneseVowels", "PickupGestureWiimoteZ"} <= set(archive_names())
    with pytest.raises(FileNotFoundError, match="no archive data set 'NoSuchSet'.*BasicMotions"):
        archive_path("NoSuchSet", "TRAIN")


# ---------------------------------------------------------------- the batch job reads the same forms


def test_the_batch_job_predicts_a_long_form_csv_as_it_does_the_same_json_lines(tmp_path):
    from seqserve.batch import cli as batch_infer

    vowels = read_labelled(archive_path("JapaneseVowels", "TEST")).subset(range(0, 370, 37))  # 10 sequences
    outputs = {}
    for form in ("jsonl", "csv"):
        out = tmp_path / f"{form}-predictions.jsonl"
        args = ["--model", "jv_bilstm_attn", "--model-repository", str(Path(__file__).parents[1] / "model_repository"),
                "--input", str(WRITERS[form](vowels, tmp_path / f"in.{form}")), "--output", str(out), "--no-progress"]
        assert batch_infer.main(args) == 0
        outputs[form] = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert sorted(outputs["csv"]) == sorted(vowels.ids)  # the job writes in its own order, by length
    assert [outputs["csv"][rid]["true_label"] for rid in vowels.ids] == vowels.labels
    assert outputs["csv"] == outputs["jsonl"]


def test_json_lines_targets_read_alike_by_simdjson_and_the_exact_parser(tmp_path, monkeypatch):
    from seqserve.batch import readers

    assert readers.simdjson is not None, "the fast path needs the 'batch' extra's simdjson"
    targets = ["1", "1.5", "-0.0", "[1, 2]", '"3"', "null", "1e308", "true", "12345678901234567890"]
    path = tmp_path / "targets.jsonl"
    path.write_text("".join(f'{{"steps": [[{i}]], "target": {t}}}\n' for i, t in enumerate(targets))
                    + '{"steps": [[9]]}\n')

    def read() -> list[tuple]:
        return [(r.index, r.line, repr(r.target), r.steps.tolist()) for r in each_record(readers.read_jsonl(path))]

    fast = read()
    monkeypatch.setattr(readers, "simdjson", None)
    assert fast == read()
    assert [t for _, _, t, _ in fast] == ["1", "1.5", "-0.0", "[1, 2]", "'3'", "None", "1e+308", "True",
                                          "12345678901234567890", "None"]


def test_hold_out_rows_takes_the_fraction_of_every_stratum():
    strata = np.array([0] * 10 + [1] * 20 + [2])  # (31,): a class of one is never held out
    kept, held = hold_out_rows(strata, 0.3, seed=1)
    assert sorted(kept + held) == list(range(31)) and held == sorted(held)
    assert np.bincount(strata[held], minlength=3).tolist() == [3, 6, 0]
    assert len(hold_out_rows(140, 0.2, seed=1)[1]) == 28
