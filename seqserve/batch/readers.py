"""Lazy readers: each yields one `Record` (or `BadRecord`) at a time, so memory stays bounded.

Input layouts (F = the model's features per step):

    jsonl    one JSON object per line: {"id": "a1", "steps": [[f1, ..., fF], ...], "label": "3"};
             "id" and "label" optional; blank lines are skipped
    parquet  a file, or a folder of *.parquet files: column `steps` list<list<float>> (any float or int
             type, list/large_list/fixed_size_list), optional `id` and `label` columns
    npz      either `steps` (sum of T, F) with every sequence concatenated along time + `lengths` (N,),
             or `x` (N, T, F) right-padded + optional `lengths` (N,); optional `ids` (N,) and `labels`
             (N,) as str or int arrays (no pickled object arrays). Arrays are read from the zip
             member a block of rows at a time, compressed (np.savez_compressed) or not.
    ts       the UEA/UCR .ts format; ids are the case numbers "0", "1", ..., labels from the class column

A record without an id gets its 0-based position in the input ("0", "1", ...), counting bad
records too, so ids stay stable between runs of the same file (which `--resume` relies on).
A record that cannot be parsed is yielded as a `BadRecord` and reading goes on; a problem with
the input as a whole raises `InputError`.
"""

from __future__ import annotations

import itertools
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

try:  # the `batch` extra's fast JSON parser; the standard library's otherwise
    from orjson import loads as fast_json_loads
except ImportError:
    fast_json_loads = json.loads

from seqserve.batch.errors import InputError
from seqserve.ts_format import TsFormatError, parse_case, parse_header

FORMATS = ("jsonl", "parquet", "npz", "ts")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet",
            ".npz": "npz", ".ts": "ts"}
PARQUET_BATCH_ROWS = 1024  # rows decoded at a time from a Parquet file
NPZ_BLOCK_ROWS = 1024  # ids / lengths / padded sequences read at a time from an .npz member
NPZ_BLOCK_BYTES = 8 << 20  # most bytes of concatenated steps read at a time


@dataclass(frozen=True)
class Fields:
    """Key / column names of JSON Lines and Parquet input."""

    id: str = "id"
    steps: str = "steps"
    label: str = "label"


@dataclass(slots=True)  # not frozen: a frozen dataclass is 4x slower to build, and there is one per sequence
class Record:
    index: int  # 0-based position in the input
    id: str
    steps: np.ndarray  # (T, F) float32
    label: str | None = None  # the true class, when the input has one
    line: int | None = None  # 1-based line (JSON Lines, .ts)

    @property
    def length(self) -> int:
        return self.steps.shape[0]


@dataclass(slots=True)
class BadRecord:
    index: int
    id: str | None
    reason: str
    line: int | None = None


Item = Record | BadRecord


class _RecordError(ValueError):
    """One record is malformed; becomes a BadRecord."""


def detect_format(path: str | Path, explicit: str | None = None) -> str:
    """The input format: `explicit` when given, else from the suffix (a folder is Parquet)."""
    if explicit is not None:
        if explicit not in FORMATS:
            raise InputError(f"unknown input format {explicit!r}; choose from {', '.join(FORMATS)}")
        return explicit
    path = Path(path)
    if path.is_dir():
        return "parquet"
    try:
        return SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise InputError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
            f"use one of {', '.join(sorted(SUFFIXES))} or pass --input-format"
        ) from None


def read_records(path: str | Path, fmt: str | None = None, fields: Fields = Fields()) -> Iterator[Item]:
    """Every record of the input, one at a time."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    fmt = detect_format(path, fmt)
    if fmt == "jsonl":
        return read_jsonl(path, fields)
    if fmt == "parquet":
        return read_parquet(path, fields)
    return read_npz(path) if fmt == "npz" else read_ts(path)


def record_id(value: Any, index: int) -> str:
    if value is None:
        return str(index)
    if isinstance(value, str):
        if not value:
            raise _RecordError("id: empty string")
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    raise _RecordError(f"id: must be a string or an integer, got {type(value).__name__}")


def as_steps(value: Any) -> np.ndarray:
    """A [time][features] nested list as float32 (T, F); an empty list gives (0, 0)."""
    try:
        steps = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise _RecordError(f"steps: not a list of equal-length lists of numbers ({str(exc).split(';')[0]})") from None
    if steps.size == 0 and steps.ndim == 1:
        return steps.reshape(0, 0)
    if steps.ndim != 2:
        raise _RecordError(f"steps: expected [time][features], got {steps.ndim} dimension(s)")
    return steps


def read_jsonl(path: Path, fields: Fields = Fields()) -> Iterator[Item]:
    with path.open("rb") as f:
        index = 0
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            yield _jsonl_item(raw, index, line, fields)
            index += 1


def parse_json(raw: bytes) -> object:
    """One JSON value: orjson's parser (several times faster), and the standard library's where orjson
    refuses a line, which also reads NaN/Infinity literals and words the errors reported for bad lines."""
    try:
        return fast_json_loads(raw)
    except ValueError:
        return json.loads(raw)


def _jsonl_item(raw: bytes, index: int, line: int, fields: Fields) -> Item:
    rid = None
    try:
        try:
            obj = parse_json(raw)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise _RecordError(f"invalid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise _RecordError(f"expected a JSON object, got {type(obj).__name__}")
        rid = record_id(obj.get(fields.id), index)
        if fields.steps not in obj:
            raise _RecordError(f"missing field {fields.steps!r}")
        steps = as_steps(obj[fields.steps])
    except _RecordError as exc:
        return BadRecord(index, rid, str(exc), line)
    label = obj.get(fields.label)
    return Record(index, rid, steps, None if label is None else str(label), line)


def _import_parquet():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("Parquet needs pyarrow: pip install 'seqserve[batch]'") from None
    return pa, pq


def parquet_files(path: Path) -> list[Path]:
    """A Parquet file, or the visible *.parquet files of a folder in name order."""
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.glob("*.parquet") if not p.name.startswith((".", "_")))


def read_parquet(path: Path, fields: Fields = Fields(), batch_rows: int = PARQUET_BATCH_ROWS) -> Iterator[Item]:
    pa, pq = _import_parquet()
    index = 0
    for file in parquet_files(path):
        reader = pq.ParquetFile(file)
        names = reader.schema_arrow.names
        if fields.steps not in names:
            raise InputError(f"{file}: no column {fields.steps!r} (columns: {', '.join(names)})")
        columns = [c for c in (fields.id, fields.steps, fields.label) if c in names]
        for batch in reader.iter_batches(batch_size=batch_rows, columns=columns):
            yield from _parquet_batch(pa, batch, index, fields, file)
            index += batch.num_rows


def _parquet_batch(pa, batch, first_index: int, fields: Fields, file: Path) -> Iterator[Item]:
    n = batch.num_rows
    names = batch.schema.names
    try:
        col = batch.column(fields.steps).cast(pa.list_(pa.list_(pa.float32())))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(
            f"{file}: column {fields.steps!r} is {batch.schema.field(fields.steps).type}, "
            f"expected list<list<float>> ({exc})"
        ) from None
    ids = batch.column(fields.id).to_pylist() if fields.id in names else [None] * n
    labels = batch.column(fields.label).to_pylist() if fields.label in names else [None] * n
    nulls = col.is_null().to_numpy(zero_copy_only=False)
    outer = np.asarray(col.offsets)  # (n + 1,) into col.values
    steps_array = col.values
    inner = np.asarray(steps_array.offsets)  # (steps + 1,) into the flat floats
    flat = steps_array.values.to_numpy(zero_copy_only=False)  # float32, NaN where null
    # A row is ragged when one of its steps has another width than its first step.
    lo, hi = int(outer[0]), int(outer[-1])
    widths = np.diff(inner[lo : hi + 1])  # values per step, for the steps of these rows
    counts = np.diff(outer)  # steps per row
    first = widths[np.minimum(outer[:-1] - lo, max(hi - lo - 1, 0))] if hi > lo else np.zeros(n, np.int64)
    row_of_step = np.repeat(np.arange(n), counts)
    ragged_rows = set(row_of_step[widths != np.repeat(first, counts)].tolist())
    outer_at, inner_at, first_width = outer.tolist(), inner.tolist(), first.tolist()
    for r in range(n):
        index = first_index + r
        try:
            rid = record_id(ids[r], index)
        except _RecordError as exc:
            yield BadRecord(index, None, str(exc))
            continue
        if nulls[r]:
            yield BadRecord(index, rid, f"{fields.steps}: null")
            continue
        s0, s1 = outer_at[r], outer_at[r + 1]
        if r in ragged_rows:
            w = widths[s0 - lo : s1 - lo]
            bad = int(np.flatnonzero(w != w[0])[0])
            yield BadRecord(index, rid, f"steps: step {bad} has {w[bad]} values, step 0 has {w[0]}")
            continue
        width = first_width[r] if s1 > s0 else 0
        steps = flat[inner_at[s0] : inner_at[s1]].reshape(s1 - s0, width)
        label = labels[r]
        yield Record(index, rid, steps, None if label is None else str(label))


class _NpyRows:
    """The rows of one array in an .npz, read from its zip member a block at a time."""

    def __init__(self, archive: zipfile.ZipFile, name: str, path: Path) -> None:
        self.name = name
        self.file: BinaryIO = archive.open(name + ".npy")
        version = np.lib.format.read_magic(self.file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        self.shape, fortran, self.dtype = read_header(self.file)
        if self.dtype.hasobject:
            raise InputError(f"{path}: array {name!r} holds Python objects; save str or numeric arrays instead")
        if fortran and len(self.shape) > 1:
            raise InputError(f"{path}: array {name!r} is in Fortran order; save np.ascontiguousarray(...)")
        if not self.shape:
            raise InputError(f"{path}: array {name!r} is a scalar")
        self.row_shape = self.shape[1:]
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        self.left = self.shape[0]
        self.path = path

    def read(self, rows: int) -> np.ndarray:
        rows = min(rows, self.left)
        want = rows * self.row_bytes
        chunks, got = [], 0
        while got < want:
            chunk = self.file.read(want - got)
            if not chunk:
                raise InputError(f"{self.path}: array {self.name!r} is truncated")
            chunks.append(chunk)
            got += len(chunk)
        self.left -= rows
        return np.frombuffer(b"".join(chunks), dtype=self.dtype).reshape(rows, *self.row_shape)


def read_npz(path: Path) -> Iterator[Item]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise InputError(f"{path}: not an .npz file ({exc})") from None
    with archive:
        members = {n.removesuffix(".npy") for n in archive.namelist()}
        if "steps" in members and "lengths" in members:
            layout = "concatenated"
        elif "x" in members:
            layout = "padded"
        else:
            raise InputError(
                f"{path}: expected arrays 'steps' + 'lengths' (concatenated) or 'x' (padded), "
                f"found {sorted(members)}"
            )
        main = _NpyRows(archive, "steps" if layout == "concatenated" else "x", path)
        count = main.shape[0] if layout == "padded" else None
        lengths = ids = labels = None
        if "lengths" in members:
            lengths = _NpyRows(archive, "lengths", path)
            count = lengths.shape[0]
            if layout == "padded" and count != main.shape[0]:
                raise InputError(f"{path}: 'lengths' has {count} rows, 'x' has {main.shape[0]}")
        if "ids" in members:
            ids = _NpyRows(archive, "ids", path)
        if "labels" in members:
            labels = _NpyRows(archive, "labels", path)
        for name, arr in (("lengths", lengths), ("ids", ids), ("labels", labels)):
            if arr is not None and arr.shape != (count,):
                raise InputError(f"{path}: {name!r} has shape {arr.shape}, expected ({count},)")
        if lengths is not None and lengths.dtype.kind not in "iu":
            raise InputError(f"{path}: 'lengths' must be integers, got {lengths.dtype}")
        if layout == "concatenated" and len(main.shape) != 2:
            raise InputError(f"{path}: 'steps' must be (sum of T, F), got shape {main.shape}")
        if layout == "padded" and len(main.shape) != 3:
            raise InputError(f"{path}: 'x' must be (N, T, F), got shape {main.shape}")
        yield from _npz_items(path, layout, count, main, lengths, ids, labels)


def _values(rows: _NpyRows | None) -> Iterator[Any]:
    """The items of a 1-D array as Python values, read a block at a time; endless Nones when absent."""
    if rows is None:
        return itertools.repeat(None)
    return itertools.chain.from_iterable(rows.read(NPZ_BLOCK_ROWS).tolist() for _ in iter(lambda: rows.left, 0))


def _npz_items(path, layout, count, main, lengths, ids, labels) -> Iterator[Item]:
    step_rows = max(1, NPZ_BLOCK_BYTES // max(1, main.row_bytes))
    padded = itertools.chain.from_iterable(main.read(step_rows) for _ in iter(lambda: main.left, 0))
    block = np.zeros((0, main.shape[-1]), dtype=np.float32)  # concatenated: steps read, from `at` on unused
    at = 0
    for index, length, raw_id, raw_label in zip(range(count), _values(lengths), _values(ids), _values(labels)):
        if layout == "padded":
            x = next(padded)  # (T, F)
            length = x.shape[0] if length is None else length
            steps = x[: max(0, length)].astype(np.float32, copy=False)
        else:
            if length < 0:
                raise InputError(f"{path}: lengths[{index}] is negative ({length})")
            if at + length > block.shape[0]:
                if block.shape[0] - at + main.left < length:
                    raise InputError(f"{path}: 'lengths' add up to more steps than 'steps' holds")
                fresh = main.read(max(length, step_rows)).astype(np.float32, copy=False)
                block, at = np.concatenate([block[at:], fresh]), 0
            steps, at = block[at : at + length], at + length
        try:
            rid = record_id(raw_id, index)
        except _RecordError as exc:
            yield BadRecord(index, None, str(exc))
            continue
        if layout == "padded" and not 0 <= length <= x.shape[0]:
            yield BadRecord(index, rid, f"lengths: {length} is outside 0..{x.shape[0]}")
            continue
        yield Record(index, rid, steps, None if raw_label is None else str(raw_label))
    if layout == "concatenated" and (block.shape[0] - at or main.left):
        raise InputError(f"{path}: 'steps' holds {block.shape[0] - at + main.left} steps beyond the sum of 'lengths'")


def read_ts(path: Path) -> Iterator[Item]:
    with path.open(encoding="utf-8", errors="replace") as f:
        lines = enumerate(f, start=1)
        try:
            header = parse_header(lines, path)
        except TsFormatError as exc:
            raise InputError(str(exc)) from None
        index = 0
        for number, raw in lines:
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            try:
                case = parse_case(text, index, header, f"line {number}")
            except TsFormatError as exc:
                yield BadRecord(index, str(index), str(exc), number)
            else:
                yield Record(index, str(index), case.steps, case.label, number)
            index += 1
