"""Reader for the UEA/UCR `.ts` time-series format (multivariate, unequal length).

A `.ts` file has `@key value` header lines, then one case per line after `@data`:
dimensions separated by `:`, values within a dimension by `,`, and the class
label last when `@classLabel true`. Missing values are written `?`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class TsFormatError(ValueError):
    """A `.ts` file that does not follow the format; the message names the line."""


@dataclass(frozen=True)
class TsHeader:
    problem_name: str = ""
    dimensions: int | None = None
    class_labels: tuple[str, ...] = ()
    has_labels: bool = False
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TsCase:
    index: int                # 0-based position of the case in the file
    steps: np.ndarray         # (T, F) float32, time-major
    label: str | None


def parse_header(lines: Iterator[tuple[int, str]], path: Path) -> TsHeader:
    attributes: dict[str, str] = {}
    for number, raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("@"):
            raise TsFormatError(f"{path}:{number}: expected a @header line, got {line[:40]!r}")
        key, _, value = line[1:].partition(" ")
        key = key.lower()
        if key == "data":
            labels = attributes.get("classlabel", "false").split()
            has_labels = bool(labels) and labels[0].lower() == "true"
            dims = attributes.get("dimensions")
            return TsHeader(
                problem_name=attributes.get("problemname", ""),
                dimensions=int(dims) if dims else None,
                class_labels=tuple(labels[1:]) if has_labels else (),
                has_labels=has_labels,
                attributes=attributes,
            )
        attributes[key] = value.strip()
    raise TsFormatError(f"{path}: no @data line")


def parse_case(line: str, index: int, header: TsHeader, where: str) -> TsCase:
    fields = line.split(":")
    label = None
    if header.has_labels:
        label = fields.pop().strip()
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
    return TsCase(index=index, steps=np.ascontiguousarray(steps), label=label)


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
            if not line or line.startswith("#"):
                continue
            yield parse_case(line, index, header, f"{path}:{number}")
            index += 1


def load_ts(path: str | Path) -> tuple[TsHeader, list[TsCase]]:
    return read_ts_header(path), list(iter_ts(path))
