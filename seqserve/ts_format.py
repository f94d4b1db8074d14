"""Reader for the UEA/UCR/TSER `.ts` time-series format (multivariate, unequal length).

A `.ts` file has `@key value` header lines (keys case-blind: `@classLabel`, `@classlabel`), then one
case per line after `@data`: dimensions separated by `:`, values within a dimension by `,`, and the
class label last when `@classLabel true`, the regression target last when `@targetLabel true` (TSER).
Missing values are written `?` and read as NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

COMMENT_MARKS = ("#", "%")  # a line starting with one is a comment (aeon's files use both)


def is_skipped(line: str) -> bool:
    """A stripped line that holds no header or case: blank, or a comment."""
    return not line or line.startswith(COMMENT_MARKS)


class TsFormatError(ValueError):
    """A `.ts` file that does not follow the format; the message names the line."""


@dataclass(frozen=True)
class TsHeader:
    problem_name: str = ""
    dimensions: int | None = None
    class_labels: tuple[str, ...] = ()
    has_labels: bool = False  # @classLabel true: each case ends with its class
    has_targets: bool = False  # @targetLabel true: each case ends with its numeric target
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TsCase:
    index: int                # 0-based position of the case in the file
    steps: np.ndarray         # (T, F) float32, time-major
    label: str | None
    target: str | None = None  # the regression target's text, when the header says @targetLabel true


def parse_header(lines: Iterator[tuple[int, str]], path: Path) -> TsHeader:
    attributes: dict[str, str] = {}
    for number, raw in lines:
        line = raw.strip()
        if is_skipped(line):
            continue
        if not line.startswith("@"):
            raise TsFormatError(f"{path}: line {number}: expected a @header line, got {line[:40]!r}")
        key, _, value = line[1:].partition(" ")
        key = key.lower()
        if key == "data":
            labels = attributes.get("classlabel", "false").split()
            has_labels = _is_true(labels)
            has_targets = _is_true(attributes.get("targetlabel", "false").split())
            if has_labels and has_targets:
                raise TsFormatError(f"{path}: both @classLabel true and @targetLabel true")
            dims = attributes.get("dimensions")
            return TsHeader(
                problem_name=attributes.get("problemname", ""),
                dimensions=int(dims) if dims else None,
                class_labels=tuple(labels[1:]) if has_labels else (),
                has_labels=has_labels,
                has_targets=has_targets,
                attributes=attributes,
            )
        attributes[key] = value.strip()
    raise TsFormatError(f"{path}: no @data line")


def _is_true(words: list[str]) -> bool:
    return bool(words) and words[0].lower() == "true"


def parse_case(line: str, index: int, header: TsHeader, where: str) -> TsCase:
    fields = line.split(":")
    label = target = None
    if header.has_labels:
        label = fields.pop().strip()
    elif header.has_targets:
        target = fields.pop().strip()
    if header.dimensions is not None and len(fields) != header.dimensions:
        raise TsFormatError(f"{where}: {len(fields)} dimensions, header says {header.dimensions}")
    try:
        dims = [[math.nan if v.strip() == "?" else float(v) for v in f.split(",")] for f in fields]
    except ValueError as exc:
        raise TsFormatError(f"{where}: {exc}") from None
    lengths = {len(d) for d in dims}
    if len(lengths) != 1:
        raise TsFormatError(f"{where}: dimensions have different lengths {sorted(lengths)}")
    steps = np.asarray(dims, dtype=np.float32).T  # (F, T) -> (T, F)
    return TsCase(index=index, steps=np.ascontiguousarray(steps), label=label, target=target)


def read_ts_header(path: str | Path) -> TsHeader:
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        return parse_header(enumerate(f, start=1), path)


def iter_ts(path: str | Path) -> Iterator[TsCase]:
    """Yield the cases of a `.ts` file one at a time (memory stays bounded)."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        lines = enumerate(f, start=1)
        header = parse_header(lines, path)
        index = 0
        for number, raw in lines:
            line = raw.strip()
            if is_skipped(line):
                continue
            yield parse_case(line, index, header, f"{path}:{number}")
            index += 1


def load_ts(path: str | Path) -> tuple[TsHeader, list[TsCase]]:
    return read_ts_header(path), list(iter_ts(path))
