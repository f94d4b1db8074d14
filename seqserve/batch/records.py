"""What the batch job reads and predicts: one record, a bad one, and many records as columns.

A record may carry its true answer: a class `label` (text) or a regression `target` (the input's raw
value: a number, a list of numbers, or text; `seqserve.labelled` checks and converts it).

The .ts reader yields a `Record` per sequence; readers of npz, Parquet and JSON Lines yield
`Records` blocks (a thousand sequences as a few arrays, no Python object per sequence) and a
`Record` only for what does not fit a block. The job screens, sorts and predicts `Records`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seqserve.numerics import pad_rows, step_rows


@dataclass(slots=True)  # not frozen: a frozen dataclass is 4x slower to build, and there is one per sequence
class Record:
    index: int  # 0-based position in the input
    id: str
    steps: np.ndarray  # (T, F) float32
    label: str | None = None  # the true class, when the input has one
    line: int | None = None  # 1-based line (JSON Lines, .ts, CSV)
    target: Any = None  # the true regression target as read, when the input has one

    @property
    def length(self) -> int:
        return self.steps.shape[0]


@dataclass(slots=True)
class BadRecord:
    index: int
    id: str | None
    reason: str
    line: int | None = None


@dataclass(slots=True)
class Records:
    """Records as columns. Row i's steps are steps[starts[i] : starts[i] + lengths[i]]; rows may share
    one steps array with other `Records` (a subset is taken without copying steps)."""

    index: np.ndarray  # (N,) int64, 0-based positions in the input
    ids: list[str]
    steps: np.ndarray  # (S, F) float32
    starts: np.ndarray  # (N,) int64
    lengths: np.ndarray  # (N,) int64
    labels: list[str | None]  # the true classes, None where the input has none
    lines: list[int | None] | None = None  # 1-based lines (JSON Lines, .ts, CSV); None: no lines
    targets: list[Any] | None = None  # the true regression targets as read; None: the input has none

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def features(self) -> int:
        return self.steps.shape[1]

    @property
    def nbytes(self) -> int:
        return int(self.lengths.sum()) * self.features * self.steps.itemsize

    @classmethod
    def packed(cls, index: np.ndarray, ids: list[str], steps: np.ndarray, lengths: np.ndarray,
               labels: list[str | None], lines: list[int | None] | None = None,
               targets: list[Any] | None = None) -> Records:
        """Records whose steps lie end to end in `steps` (sum of lengths, F)."""
        lengths = lengths.astype(np.int64, copy=False)
        return cls(index, ids, steps, np.cumsum(lengths) - lengths, lengths, labels, lines, targets)

    @classmethod
    def of(cls, records: Sequence[Record], features: int) -> Records:
        """Record objects as columns (one concatenation of their steps)."""
        if not records:
            return cls.packed(np.zeros(0, np.int64), [], np.zeros((0, features), np.float32),
                              np.zeros(0, np.int64), [])
        lines = [r.line for r in records]
        targets = [r.target for r in records]
        return cls.packed(np.fromiter((r.index for r in records), np.int64, len(records)), [r.id for r in records],
                          np.concatenate([r.steps for r in records]).astype(np.float32, copy=False),
                          np.fromiter((r.length for r in records), np.int64, len(records)),
                          [r.label for r in records], _unless_all_none(lines), _unless_all_none(targets))

    @classmethod
    def concat(cls, parts: Sequence[Records]) -> Records:
        """One `Records` of several with the same features (at least one); steps are copied once."""
        if len(parts) == 1:
            return parts[0]
        return cls.packed(np.concatenate([p.index for p in parts]), [i for p in parts for i in p.ids],
                          np.concatenate([p.contiguous_steps() for p in parts]),
                          np.concatenate([p.lengths for p in parts]), [t for p in parts for t in p.labels],
                          _joined([p.lines for p in parts], parts), _joined([p.targets for p in parts], parts))

    def take(self, rows: np.ndarray | Sequence[int]) -> Records:
        """The rows at `rows`, in that order, sharing this one's steps."""
        rows = np.asarray(rows, dtype=np.int64)
        picked = rows.tolist()
        ids, labels, lines, targets = self.ids, self.labels, self.lines, self.targets
        return Records(self.index[rows], [ids[i] for i in picked], self.steps, self.starts[rows], self.lengths[rows],
                       [labels[i] for i in picked], None if lines is None else [lines[i] for i in picked],
                       None if targets is None else [targets[i] for i in picked])

    def line(self, row: int) -> int | None:
        return None if self.lines is None else self.lines[row]

    def record(self, row: int) -> Record:
        """Row `row` as a Record (for messages about one record)."""
        start = int(self.starts[row])
        return Record(int(self.index[row]), self.ids[row], self.steps[start : start + int(self.lengths[row])],
                      self.labels[row], self.line(row), None if self.targets is None else self.targets[row])

    def bad(self, row: int, reason: str) -> BadRecord:
        return BadRecord(int(self.index[row]), self.ids[row], reason, self.line(row))

    def contiguous_steps(self) -> np.ndarray:
        """Every row's steps end to end, (sum of lengths, F): a view when they already are."""
        if not len(self):
            return self.steps[:0]
        first, total = int(self.starts[0]), int(self.lengths.sum())
        if np.array_equal(self.starts - first, np.cumsum(self.lengths) - self.lengths):
            return self.steps[first : first + total]
        packed_at, _ = step_rows(self.starts, self.lengths, 0)  # (sum of lengths,)
        return self.steps[packed_at]

    def padded(self) -> tuple[np.ndarray, np.ndarray]:
        """x (N, T_max, F) right-padded with zeros, and lengths (N,) int64: one gather."""
        return pad_rows(self.steps, self.starts, self.lengths)

    def finite_rows(self) -> np.ndarray:
        """(N,) bool: rows whose every value is finite (rows need at least one step)."""
        packed = self.contiguous_steps()
        finite = np.isfinite(packed).all(axis=1)  # (sum of lengths,)
        if finite.all():
            return np.ones(len(self), dtype=bool)
        return np.logical_and.reduceat(finite, np.cumsum(self.lengths) - self.lengths)


def _unless_all_none(column: list[Any]) -> list[Any] | None:
    return None if all(value is None for value in column) else column


def _joined(columns: Sequence[list[Any] | None], parts: Sequence[Records]) -> list[Any] | None:
    """An optional column of several `Records` end to end (None where no part has it)."""
    if all(column is None for column in columns):
        return None
    return [value for column, part in zip(columns, parts, strict=True) for value in (column or [None] * len(part))]
