"""Labelled sequences for training: any input form the batch job reads, with each sequence's answer.

One reader layer serves both: `read_labelled` reads through `seqserve.batch.readers` (JSON Lines,
Parquet, .npz, UEA/UCR/TSER .ts, long-form CSV) and only checks and converts what they yield:

    classify  each sequence has a class label (`label` field / column, the .ts class column); labels
              are kept as text, numbers included
    regress   each sequence has one or more numbers (`target` field: a number or a list of numbers;
              .npz `targets` (N,) or (N, K); CSV `target` or `target_*` columns; the .ts target column)

The task comes from the data (a label -> classify, a target -> regress) unless it is given: classify
then reads a target as text, regress reads a label as a number.

Missing values (`?` in .ts, NaN, null, an empty CSV cell) are refused unless a fill is given (FILLS);
Inf is always refused. Every problem is a `DataError` naming the file, the line (or record) and the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from seqserve.batch.errors import InputError
from seqserve.batch.readers import SUFFIXES, Fields, csv_columns, detect_format, each_record, read_records
from seqserve.batch.records import BadRecord, Record

Task = Literal["classify", "regress"]
TASKS: tuple[Task, ...] = ("classify", "regress")

FILLS = {
    "ffill": "carry the last value seen forward; a gap at the start takes the first value seen",
    "linear": "interpolate linearly between the values either side; gaps at either end take the nearest value",
    "zero": "replace each missing value with 0",
}


class DataError(ValueError):
    """Data that cannot be trained on; the message is "<file>: line N: field 'name': what is wrong"
    (`record N` where the form has no lines, 0-based like the default ids)."""

    def __init__(self, source: str | Path, problem: str, *, line: int | None = None, record: int | None = None,
                 field: str | None = None) -> None:
        place = [str(source)]
        if line is not None:
            place.append(f"line {line}")
        elif record is not None:
            place.append(f"record {record}")
        if field is not None:
            place.append(f"field {field!r}")
        super().__init__(": ".join([*place, problem]))
        self.source, self.line, self.record, self.field = str(source), line, record, field


@dataclass(frozen=True)
class LabelledSet:
    sequences: list[np.ndarray]  # each (T_i, F) float32, T_i >= 1, every value finite
    ids: list[str]
    task: Task
    labels: list[str] | None  # classify: one class label per sequence (as text)
    targets: np.ndarray | None  # regress: (N, K) float32
    feature_names: list[str]  # from the file where it has them (CSV columns), else f"f{i}"
    source: str  # the path, for messages
    lines: list[int | None] | None = None  # 1-based line of each sequence where the form has lines

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def features(self) -> int:
        return len(self.feature_names)

    @property
    def classes(self) -> list[str]:
        """The distinct labels, sorted numbers first by value ("2" < "10"), then text."""
        return sorted(set(self.labels or ()), key=_label_order)

    def label_indices(self, classes: Sequence[str] | None = None) -> np.ndarray:
        """(N,) int64: each label's position in `classes` (default: this set's own)."""
        position = {label: i for i, label in enumerate(self.classes if classes is None else classes)}
        return np.array([position[label] for label in self.labels or ()], dtype=np.int64)

    def subset(self, rows: Iterable[int]) -> LabelledSet:
        """The sequences at `rows`, in that order."""
        rows = list(rows)
        return replace(
            self,
            sequences=[self.sequences[i] for i in rows],
            ids=[self.ids[i] for i in rows],
            labels=None if self.labels is None else [self.labels[i] for i in rows],
            targets=None if self.targets is None else self.targets[rows],
            lines=None if self.lines is None else [self.lines[i] for i in rows],
        )

    def where(self, row: int) -> dict[str, int | None]:
        """DataError's place arguments for sequence `row`."""
        line = None if self.lines is None else self.lines[row]
        return {"line": line, "record": None if line is not None else row}


def _label_order(label: str) -> tuple[int, float, str]:
    try:
        number = float(label)
    except ValueError:
        return 1, 0.0, label
    return (0, number, label) if math.isfinite(number) else (1, 0.0, label)


def read_labelled(path: str | Path, task: str | None = None, fill: str | None = None) -> LabelledSet:
    """Every sequence of a labelled file with its class label (classify) or target (regress).

    `task` None chooses from the data; `fill` (a key of FILLS) fills missing values, else they are refused."""
    path = Path(path)
    if task is not None and task not in TASKS:
        raise ValueError(f"task: {task!r} is not one of {', '.join(TASKS)}")
    if fill is not None and fill not in FILLS:
        raise ValueError(f"fill: {fill!r} is not one of {', '.join(FILLS)}")
    fields = Fields()
    records, fmt = _read_all(path, fields)
    if not records:
        raise DataError(path, "no sequences")
    chosen = _choose_task(path, records, fields, task)
    answer = _answer_field(records, fields, chosen)
    names = _feature_names(path, fmt, fields, records[0])
    return LabelledSet(
        sequences=_checked_sequences(path, records, names, fill),
        ids=[r.id for r in records],
        task=chosen,
        labels=_labels(path, records, answer, fields) if chosen == "classify" else None,
        targets=_targets(path, records, answer, fields) if chosen == "regress" else None,
        feature_names=names,
        source=str(path),
        lines=[r.line for r in records] if any(r.line is not None for r in records) else None,
    )


def _read_all(path: Path, fields: Fields) -> tuple[list[Record], str]:
    """Every record of the file; the first bad one, a missing file or an unknown form as a DataError."""
    if not path.exists():
        raise DataError(path, "no such file")
    if path.is_file() and path.suffix.lower() not in SUFFIXES:
        raise DataError(path, f"unknown extension {path.suffix!r}: use one of {', '.join(sorted(SUFFIXES))}")
    try:
        fmt = detect_format(path)
        records = []
        for item in each_record(read_records(path, fmt, fields)):
            if isinstance(item, BadRecord):
                raise _bad_record_error(path, item)
            records.append(item)
    except InputError as exc:
        raise DataError(path, str(exc).removeprefix(f"{path}: ")) from None
    return records, fmt


def _bad_record_error(path: Path, bad: BadRecord) -> DataError:
    """A reader's BadRecord ("steps: null") as a DataError naming its field where the reason starts with one."""
    match = re.match(r"(\w+): (.*)", bad.reason, re.DOTALL)
    field, problem = (match.group(1), match.group(2)) if match else (None, bad.reason)
    return DataError(path, problem, line=bad.line, record=bad.index, field=field)


def _feature_names(path: Path, fmt: str, fields: Fields, first: Record) -> list[str]:
    """The CSV file's feature columns; f0, f1, ... for forms without names."""
    if fmt == "csv":
        from pyarrow import csv

        with csv.open_csv(path) as reader:
            return csv_columns(reader.schema.names, fields).features
    return [f"f{i}" for i in range(first.steps.shape[1] if first.steps.ndim == 2 else 0)]


def _choose_task(path: Path, records: list[Record], fields: Fields, task: str | None) -> Task:
    has_label = any(r.label is not None for r in records)
    has_target = any(r.target is not None for r in records)
    if task is not None:
        if not (has_label or has_target):
            raise DataError(path, f"no sequence has a {fields.label!r} or {fields.target!r}", field=fields.label)
        return "classify" if task == "classify" else "regress"
    if has_label and has_target:
        raise DataError(path, f"the file has both {fields.label!r} and {fields.target!r}: pass the task "
                              "(classify or regress)")
    if has_label:
        return "classify"
    if has_target:
        return "regress"
    raise DataError(path, f"no sequence has a {fields.label!r} (classify) or {fields.target!r} (regress): "
                          "nothing to learn from", field=fields.label)


def _answer_field(records: list[Record], fields: Fields, task: Task) -> str:
    """The field that holds the answer for `task`: its own field when the file has it, else the other one."""
    own, other = (fields.label, fields.target) if task == "classify" else (fields.target, fields.label)
    has_own = any(_answer(r, own, fields) is not None for r in records)
    return own if has_own else other


def _answer(record: Record, field: str, fields: Fields) -> Any:
    return record.label if field == fields.label else record.target


def _labels(path: Path, records: list[Record], field: str, fields: Fields) -> list[str]:
    labels = []
    for r in records:
        value = _answer(r, field, fields)
        if value is None or value == "":
            raise DataError(path, "missing", line=r.line, record=r.index, field=field)
        if isinstance(value, list):
            raise DataError(path, f"{value!r} is a list; a class label is one value", line=r.line, record=r.index,
                            field=field)
        labels.append(str(value))
    return labels


def _targets(path: Path, records: list[Record], field: str, fields: Fields) -> np.ndarray:
    """(N, K) float32: every record's target, each K finite numbers."""
    rows: list[list[float]] = []
    for r in records:
        row = _target_numbers(_answer(r, field, fields))
        if isinstance(row, str):
            raise DataError(path, row, line=r.line, record=r.index, field=field)
        if rows and len(row) != len(rows[0]):
            raise DataError(path, f"{len(row)} numbers, the first sequence has {len(rows[0])}", line=r.line,
                            record=r.index, field=field)
        rows.append(row)
    return np.array(rows, dtype=np.float32)


def _target_numbers(value: Any) -> list[float] | str:
    """A target (a number, numeric text, or a list of them) as numbers; what is wrong with it otherwise."""
    if value is None or value == "":
        return "missing"
    values = value if isinstance(value, list) else [value]
    if not values:
        return "an empty list"
    numbers = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            return f"{v!r} is not a number"
        try:
            number = float(v)
        except ValueError:
            return f"{v!r} is not a number"
        if not math.isfinite(number):
            return f"{v!r} is not a finite number"
        numbers.append(number)
    return numbers


def _checked_sequences(path: Path, records: list[Record], names: list[str], fill: str | None) -> list[np.ndarray]:
    """Every record's steps (T, F) float32: at least one step, F features, finite (missing values filled)."""
    sequences = []
    for r in records:
        steps = r.steps  # (T, F)
        problem = _steps_problem(steps, names, fill)
        if problem:
            raise DataError(path, problem, line=r.line, record=r.index, field="steps")
        sequences.append(fill_missing(steps, fill) if fill else np.ascontiguousarray(steps, dtype=np.float32))
    return sequences


def _steps_problem(steps: np.ndarray, names: list[str], fill: str | None) -> str | None:
    """What keeps steps (T, F) from training: no step, another feature count, an infinity, a missing value
    without a fill, or (with a fill that needs values) a feature with none."""
    if steps.shape[0] == 0:
        return "an empty sequence (0 steps)"
    if steps.shape[1] != len(names):
        return f"{steps.shape[1]} features per step, the first sequence has {len(names)}"
    infinite = np.argwhere(np.isinf(steps))  # (n, 2) [step, feature]
    if infinite.size:
        t, f = infinite[0].tolist()
        return f"{steps[t, f]} at step {t}, feature {names[f]!r}"
    missing = np.isnan(steps)  # (T, F)
    if not missing.any():
        return None
    if fill is None:
        t, f = np.argwhere(missing)[0].tolist()
        return f"missing value ('?', NaN or empty) at step {t}, feature {names[f]!r}; pass a fill: {', '.join(FILLS)}"
    empty = np.flatnonzero(missing.all(axis=0))  # (features with no value,)
    if fill != "zero" and empty.size:
        return f"feature {names[int(empty[0])]!r} has no value at all: nothing to fill from (the 'zero' fill can)"
    return None


def fill_missing(steps: np.ndarray, fill: str) -> np.ndarray:
    """steps (T, F) with every NaN filled per feature as FILLS[fill] says."""
    out = np.array(steps, dtype=np.float32)  # (T, F) a copy
    missing = np.isnan(out)
    if fill == "zero":
        out[missing] = 0.0
        return out
    t = np.arange(out.shape[0])
    for f in np.flatnonzero(missing.any(axis=0)).tolist():
        seen = ~missing[:, f]  # (T,)
        if fill == "linear":
            out[:, f] = np.interp(t, t[seen], out[seen, f])
        else:  # ffill: index of the last value seen at or before each step, the first one before any
            last = np.maximum.accumulate(np.where(seen, t, -1))
            out[:, f] = out[np.where(last < 0, int(np.argmax(seen)), last), f]
    return out


def check_split(train: LabelledSet, test: LabelledSet | None) -> None:
    """Refuse a training set a model cannot learn from, and a test set it cannot be judged on."""
    if train.task == "classify" and len(train.classes) < 2:
        raise DataError(train.source, f"a single class {train.classes[0]!r}: a classifier needs at least two",
                        field="label")
    if test is None:
        return
    if test.task != train.task:
        raise DataError(test.source, f"task {test.task}, the training file {train.source} is {train.task}")
    if test.features != train.features:
        raise DataError(test.source, f"{test.features} features per step, the training file {train.source} has "
                                     f"{train.features}", field="steps")
    if train.task == "classify":
        known = set(train.classes)
        for row, label in enumerate(test.labels or ()):
            if label not in known:
                raise DataError(test.source, f"class {label!r} is not in the training file {train.source} "
                                             f"(classes: {', '.join(train.classes)})", field="label", **test.where(row))
    elif train.targets is not None and test.targets is not None and test.targets.shape[1] != train.targets.shape[1]:
        raise DataError(test.source, f"{test.targets.shape[1]} numbers per target, the training file "
                                     f"{train.source} has {train.targets.shape[1]}", field="target")


def split(data: LabelledSet, fraction: float, seed: int) -> tuple[LabelledSet, LabelledSet]:
    """(kept, held out): `fraction` of the sequences held out at random, of every class alike for classify
    (a class of one stays whole in `kept`); both keep the input's order."""
    if len(data) < 2:
        raise DataError(data.source, f"{len(data)} sequence(s): too few to hold any out")
    kept, held = hold_out_rows(data.label_indices() if data.task == "classify" else len(data), fraction, seed)
    return data.subset(kept), data.subset(held)


def hold_out_rows(strata: np.ndarray | int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept rows, held-out rows), each in ascending order: `fraction` of each stratum's rows at random, at
    least one and never all (a stratum of one is kept whole). `strata`: (N,) int class indices, or N for
    one stratum of N rows (regression)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction: {fraction} is not between 0 and 1")
    classes = np.zeros(strata, dtype=np.int64) if isinstance(strata, int) else np.asarray(strata)  # (N,)
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for stratum in np.unique(classes):
        rows = rng.permutation(np.flatnonzero(classes == stratum))
        count = min(max(round(fraction * len(rows)), 1), len(rows) - 1)
        held += rows[:count].tolist()
    held_set = set(held)
    return [i for i in range(len(classes)) if i not in held_set], sorted(held)
