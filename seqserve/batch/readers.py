"""Lazy readers, so memory stays bounded: npz, Parquet and JSON Lines yield `Records` blocks of up to
~1,000 records as columns (no Python object per record), and a `Record` or `BadRecord` for what does
not fit a block; .ts yields one `Record` (or `BadRecord`) at a time. `each_record` flattens either.

Input layouts (F = the model's features per step):

    jsonl    one JSON object per line: {"id": "a1", "steps": [[f1, ..., fF], ...], "label": "3"};
             "id", "label" and "target" (a number or a list of numbers) optional; blank lines are
             skipped. Read ~1 MB of lines at a time, by simdjson where installed (the `batch` extra)
             and by orjson or the json module for any line simdjson could read differently; both give
             the same records
    parquet  a file, or a folder of *.parquet files: column `steps` list<list<float>> (any float or int
             type, list/large_list/fixed_size_list), optional `id`, `label` and `target` columns
    npz      either `steps` (sum of T, F) with every sequence concatenated along time + `lengths` (N,),
             or `x` (N, T, F) right-padded + optional `lengths` (N,); optional `ids` (N,) and `labels`
             (N,) as str or int arrays, `targets` (N,) or (N, K) numbers (no pickled object arrays).
             Arrays are read from the zip member a block of rows at a time, compressed
             (np.savez_compressed) or not.
    ts       the UEA/UCR/TSER .ts format; ids are the case numbers "0", "1", ..., labels from the class
             column (@classLabel true), targets from the target column (@targetLabel true)
    csv      long form, one row per time step: columns `id`, `t` (optional; orders the steps), one column
             per feature, optional `label` or `target` / `target_*` (constant within an id). Rows of an id
             need not be adjacent: steps are ordered by t, ids by first appearance. Read whole.

A record without an id gets its 0-based position in the input ("0", "1", ...), counting bad
records too, so ids stay stable between runs of the same file (which `--resume` relies on).
A record that cannot be parsed is yielded as a `BadRecord` and reading goes on; a problem with
the input as a whole raises `InputError`.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

try:  # the `batch` extra's fast JSON parser; the standard library's otherwise
    from orjson import loads as fast_json_loads
except ImportError:
    fast_json_loads = json.loads
try:  # the `batch` extra's SIMD parser, which reads a line's steps into one buffer
    import simdjson
except ImportError:
    simdjson = None

from seqserve.batch.errors import InputError
from seqserve.batch.records import BadRecord, Record, Records
from seqserve.ts_format import TsFormatError, is_skipped, parse_case, parse_header

FORMATS = ("jsonl", "parquet", "npz", "ts", "csv")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet",
            ".npz": "npz", ".ts": "ts", ".csv": "csv"}
PARQUET_BATCH_ROWS = 1024  # rows decoded at a time from a Parquet file
JSONL_BLOCK_BYTES = 1 << 20  # about the most bytes of lines read at a time from a JSON Lines file
NPZ_BLOCK_ROWS = 1024  # ids / lengths / padded sequences read at a time from an .npz member
NPZ_BLOCK_BYTES = 8 << 20  # most bytes of concatenated steps read at a time


@dataclass(frozen=True)
class Fields:
    """Key / column names of JSON Lines and Parquet input."""

    id: str = "id"
    steps: str = "steps"
    label: str = "label"
    target: str = "target"  # CSV: also target_<name> columns, one number each
    time: str = "t"  # CSV only: the step's time, which orders the steps of an id


Item = Record | BadRecord | Records  # Records: a block of many records (npz, Parquet)


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
    if fmt == "csv":
        return read_csv(path, fields)
    return read_npz(path) if fmt == "npz" else read_ts(path)


def each_record(items: Iterable[Item]) -> Iterator[Record | BadRecord]:
    """The items of a reader one record at a time (a `Records` block as a Record per row)."""
    for item in items:
        if isinstance(item, Records):
            yield from map(item.record, range(len(item)))
        else:
            yield item


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
        with np.errstate(over="ignore"):  # beyond float32's range becomes Inf, which screening reports
            steps = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise _RecordError(f"steps: not a list of equal-length lists of numbers ({str(exc).split(';')[0]})") from None
    if steps.size == 0 and steps.ndim == 1:
        return steps.reshape(0, 0)
    if steps.ndim != 2:
        raise _RecordError(f"steps: expected [time][features], got {steps.ndim} dimension(s)")
    return steps


def read_jsonl(path: Path, fields: Fields = Fields()) -> Iterator[Item]:
    """`Records` blocks of the lines simdjson reads straight into arrays (`_SimdLines`), and a Record or
    BadRecord, in input order, for every other line (orjson, then the json module)."""
    # simdjson looks a key up only up to a NUL in its name
    simple_names = not any("\0" in name for name in (fields.id, fields.steps, fields.label, fields.target))
    simd = _SimdLines(fields) if simdjson is not None and simple_names else None
    with path.open("rb") as f:
        index, line = 0, 1
        while raws := f.readlines(JSONL_BLOCK_BYTES):
            chunk = [(number, raw) for number, raw in enumerate(raws, start=line) if raw.strip()]
            line += len(raws)
            if simd is None:
                yield from (_jsonl_item(raw, index + k, number, fields) for k, (number, raw) in enumerate(chunk))
            else:
                yield from simd.items(chunk, index)
            index += len(chunk)


class _SimdLines:
    """Lines read by simdjson: the steps come out as one buffer of doubles, no Python float per value.

    simdjson flattens any nesting and keeps the first of duplicate keys, so a line takes this path only
    when nothing can differ from the exact path's reading: an object with no repeated key, `steps` an
    array of T arrays of equal length and no other `[` in the line (so no deeper nesting), numbers only,
    an id that is a non-empty string, an integer or absent, a label that is a string, number, boolean or
    absent, a target that is a number or absent. Any other line, bad ones included, is read by `_jsonl_item`
    and gets its exact message."""

    def __init__(self, fields: Fields) -> None:
        self.fields = fields
        self.parser = simdjson.Parser()

    def items(self, chunk: list[tuple[int, bytes]], first_index: int) -> Iterator[Item]:
        """The lines of `chunk` (line number, raw) from `first_index` on, consecutive simple lines of one
        width as a `Records` block."""
        block = _BlockBuilder()
        for k, (line, raw) in enumerate(chunk):
            index = first_index + k
            row = self.read(raw, index)
            if row is None or not row[3].shape[0]:  # the exact path, also for the rare empty sequence
                yield from block.flush()  # first: items keep input order (the duplicate check relies on it)
                yield _jsonl_item(raw, index, line, self.fields)
                continue
            if not block.fits(row[3]):
                yield from block.flush()
            block.add(index, line, *row)
        yield from block.flush()

    def read(self, raw: bytes, index: int) -> tuple[str, str | None, float | None, np.ndarray] | None:
        """(id, label or None, target or None, steps (T, F) float64) of a simple line, record `index`;
        None otherwise."""
        try:
            doc = self.parser.parse(raw)
            if doc.__class__ is not simdjson.Object:
                return None
            keys = set(doc.keys())  # (doc.get of an absent key costs an exception)
            if len(keys) != len(doc) or self.fields.steps not in keys:  # a repeated key, or no steps
                return None
            steps = doc[self.fields.steps]
            if steps.__class__ is not simdjson.Array:
                return None
            length = len(steps)
            widths = {len(step) for step in steps}  # TypeError where a step is not an array
            if len(widths) > 1 or raw.count(b"[") != length + 1:
                return None
            values = np.frombuffer(steps.as_buffer(of_type="d"), dtype=np.float64)  # TypeError: not a number
            rid = doc[self.fields.id] if self.fields.id in keys else None
            label = doc[self.fields.label] if self.fields.label in keys else None
            target = doc[self.fields.target] if self.fields.target in keys else None
        except (ValueError, TypeError, RuntimeError, KeyError):  # not JSON simdjson reads (NaN, big numbers, ...)
            return None
        finally:
            doc = steps = None  # the parser refuses to parse again while its documents are referenced
        try:
            rid = record_id(rid, index)
        except _RecordError:  # the exact path words the error
            return None
        if not (label is None or label.__class__ in (str, int, float, bool)):
            return None
        if not (target is None or target.__class__ in (int, float)):
            return None
        width = widths.pop() if widths else 0
        return rid, (None if label is None else str(label)), target, values.reshape(length, width)


class _BlockBuilder:
    """Rows of one width gathered into a `Records` block."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.index: list[int] = []
        self.ids: list[str] = []
        self.labels: list[str | None] = []
        self.targets: list[float | None] = []
        self.lines: list[int | None] = []
        self.steps: list[np.ndarray] = []  # (T, F) float64 each

    def fits(self, steps: np.ndarray) -> bool:
        return not self.steps or steps.shape[1] == self.steps[0].shape[1]

    def add(self, index: int, line: int, rid: str, label: str | None, target: float | None,
            steps: np.ndarray) -> None:
        self.index.append(index)
        self.ids.append(rid)
        self.labels.append(label)
        self.targets.append(target)
        self.lines.append(line)
        self.steps.append(steps)

    def flush(self) -> Iterator[Records]:
        if not self.steps:
            return
        lengths = np.fromiter(map(len, self.steps), np.int64, len(self.steps))
        with np.errstate(over="ignore"):  # beyond float32's range becomes Inf, as np.asarray makes it
            steps = np.concatenate(self.steps).astype(np.float32)  # (sum of T, F)
        targets = None if all(t is None for t in self.targets) else self.targets
        yield Records.packed(np.array(self.index, np.int64), self.ids, steps, lengths, self.labels, self.lines,
                             targets)
        self._clear()


def parse_json(raw: bytes) -> object:
    """One JSON value: orjson's parser (several times faster), and the standard library's where orjson
    refuses a line, which also reads NaN/Infinity literals and words the errors reported for bad lines."""
    try:
        return fast_json_loads(raw)
    except ValueError:
        try:
            return json.loads(raw)
        except RecursionError:  # nested deeper than orjson's 1,024 levels and Python's stack
            raise ValueError("nested too deeply") from None


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
    return Record(index, rid, steps, None if label is None else str(label), line, obj.get(fields.target))


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
        columns = [c for c in (fields.id, fields.steps, fields.label, fields.target) if c in names]
        # One thread: onnxruntime's threads have the cores; pyarrow's pool beside them cost ~1 us CPU a record.
        for batch in reader.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False):
            yield from _parquet_batch(pa, batch, index, fields, file)
            index += batch.num_rows


def _parquet_batch(pa, batch, first_index: int, fields: Fields, file: Path) -> Iterator[Item]:
    """The rows of one record batch: a `Records` block when every step has one width (no copy of the
    values), else one item per row."""
    n = batch.num_rows
    try:
        col = batch.column(fields.steps).cast(pa.list_(pa.list_(pa.float32())))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(
            f"{file}: column {fields.steps!r} is {batch.schema.field(fields.steps).type}, "
            f"expected list<list<float>> ({exc})"
        ) from None
    outer = np.asarray(col.offsets).astype(np.int64)  # (n + 1,) into col.values
    inner = np.asarray(col.values.offsets).astype(np.int64)  # (steps + 1,) into the flat floats
    flat = col.values.values.to_numpy(zero_copy_only=False)  # float32, NaN where null
    lo, hi = int(outer[0]), int(outer[-1])
    widths = np.diff(inner[lo : hi + 1])  # (steps,) values per step, for the steps of these rows
    counts = np.diff(outer)  # (n,) steps per row
    columns = _ParquetColumns(batch, fields, first_index, col.is_null().to_numpy(zero_copy_only=False))
    if hi > lo and (widths == widths[0]).all():
        steps = flat[inner[lo] : inner[hi]].reshape(hi - lo, int(widths[0]))  # (steps, F)
        block = Records(np.arange(first_index, first_index + n), columns.ids, steps, outer[:-1] - lo, counts,
                        columns.labels, targets=columns.targets)
        yield from columns.bad
        yield block.take(columns.good) if columns.bad else block
    else:
        yield from _parquet_rows(columns, outer, inner, flat, widths, lo)


class _ParquetColumns:
    """A record batch's ids and labels as Python lists, and the rows that are bad whatever their steps
    (an invalid id, null steps)."""

    def __init__(self, batch, fields: Fields, first_index: int, nulls: np.ndarray) -> None:
        n, names = batch.num_rows, batch.schema.names
        self.first_index = first_index
        raw_ids = batch.column(fields.id).to_pylist() if fields.id in names else None
        self.ids, id_errors = _row_ids(raw_ids, first_index, n)
        labels = batch.column(fields.label).to_pylist() if fields.label in names else [None] * n
        self.labels = [None if label is None else str(label) for label in labels]
        self.targets = batch.column(fields.target).to_pylist() if fields.target in names else None
        self.bad: list[BadRecord] = []
        self.good = list(range(n))
        if not id_errors and not nulls.any():
            return
        good = []
        for r in range(n):
            index = first_index + r
            if r in id_errors:
                self.bad.append(BadRecord(index, None, id_errors[r]))
            elif nulls[r]:
                self.bad.append(BadRecord(index, self.ids[r], f"{fields.steps}: null"))
            else:
                good.append(r)
        self.good = good


def _row_ids(raw: list | None, first_index: int, n: int) -> tuple[list[str | None], dict[int, str]]:
    """Each row's id as a string (its index where it has none), None where the id is invalid; and why,
    by row."""
    if raw is None:
        return list(map(str, range(first_index, first_index + n))), {}
    if set(map(type, raw)) == {str} and "" not in raw:
        return raw, {}
    ids: list[str | None] = []
    errors = {}
    for r, value in enumerate(raw):
        try:
            ids.append(record_id(value, first_index + r))
        except _RecordError as exc:
            ids.append(None)
            errors[r] = str(exc)
    return ids, errors


def _parquet_rows(columns: _ParquetColumns, outer: np.ndarray, inner: np.ndarray, flat: np.ndarray,
                  widths: np.ndarray, lo: int) -> Iterator[Item]:
    """One item per row, for a record batch whose steps differ in width (ragged rows become BadRecords)."""
    yield from columns.bad
    ids, labels, targets = columns.ids, columns.labels, columns.targets
    for r in columns.good:
        s0, s1 = int(outer[r]), int(outer[r + 1])
        w = widths[s0 - lo : s1 - lo]  # (T,) values per step
        index = columns.first_index + r
        if len(w) and (w != w[0]).any():
            bad = int(np.flatnonzero(w != w[0])[0])
            yield BadRecord(index, ids[r], f"steps: step {bad} has {w[bad]} values, step 0 has {w[0]}")
            continue
        width = int(w[0]) if len(w) else 0
        steps = flat[inner[s0] : inner[s1]].reshape(s1 - s0, width)
        yield Record(index, ids[r], steps, labels[r], target=None if targets is None else targets[r])


class _NpyRows:
    """The rows of one array in an .npz, a block at a time: views of the file mapped into memory when
    the member is stored (np.savez), read and decompressed from the zip member otherwise."""

    def __init__(self, archive: zipfile.ZipFile, name: str, path: Path) -> None:
        self.name = name
        member = archive.getinfo(name + ".npy")
        self.file: BinaryIO = archive.open(member)
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
        self.mapped = self._map(member) if member.compress_type == zipfile.ZIP_STORED else None

    def _map(self, member: zipfile.ZipInfo) -> np.ndarray | None:
        """The whole array as a read-only view of the file (None when it has no rows)."""
        if not self.shape[0] or not self.row_bytes:
            return None
        with self.path.open("rb") as f:  # the member's local header: 30 bytes, then its name and extra field
            f.seek(member.header_offset)
            header = f.read(30)
        name_length, extra_length = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
        start = member.header_offset + 30 + name_length + extra_length + self.file.tell()
        if start + self.shape[0] * self.row_bytes > self.path.stat().st_size:
            raise InputError(f"{self.path}: array {self.name!r} is truncated")
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=start, shape=self.shape)

    def read(self, rows: int) -> np.ndarray:
        rows = min(rows, self.left)
        if self.mapped is not None:
            at = self.shape[0] - self.left
            self.left -= rows
            return self.mapped[at : at + rows]
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
        lengths = ids = labels = targets = None
        if "lengths" in members:
            lengths = _NpyRows(archive, "lengths", path)
            count = lengths.shape[0]
            if layout == "padded" and count != main.shape[0]:
                raise InputError(f"{path}: 'lengths' has {count} rows, 'x' has {main.shape[0]}")
        if "ids" in members:
            ids = _NpyRows(archive, "ids", path)
        if "labels" in members:
            labels = _NpyRows(archive, "labels", path)
        if "targets" in members:
            targets = _NpyRows(archive, "targets", path)
            if targets.shape[:1] != (count,) or len(targets.shape) > 2 or targets.dtype.kind not in "iuf":
                raise InputError(f"{path}: 'targets' must be numbers of shape ({count},) or ({count}, K), "
                                 f"got {targets.dtype} {targets.shape}")
        for name, arr in (("lengths", lengths), ("ids", ids), ("labels", labels)):
            if arr is not None and arr.shape != (count,):
                raise InputError(f"{path}: {name!r} has shape {arr.shape}, expected ({count},)")
        if lengths is not None and lengths.dtype.kind not in "iu":
            raise InputError(f"{path}: 'lengths' must be integers, got {lengths.dtype}")
        if layout == "concatenated" and len(main.shape) != 2:
            raise InputError(f"{path}: 'steps' must be (sum of T, F), got shape {main.shape}")
        if layout == "padded" and len(main.shape) != 3:
            raise InputError(f"{path}: 'x' must be (N, T, F), got shape {main.shape}")
        yield from _npz_items(path, layout, count, main, lengths, ids, labels, targets)


def _npz_items(path: Path, layout: str, count: int, main: _NpyRows, lengths: _NpyRows | None,
               ids: _NpyRows | None, labels: _NpyRows | None, targets: _NpyRows | None) -> Iterator[Item]:
    """The records a block of rows at a time: a `Records` block each, and a BadRecord per bad row."""
    steps = _StepStream(main, path) if layout == "concatenated" else None
    rows = NPZ_BLOCK_ROWS
    if layout == "padded":
        rows = max(1, min(NPZ_BLOCK_ROWS, NPZ_BLOCK_BYTES // main.row_bytes))
    for first in range(0, count, rows):
        n = min(rows, count - first)
        row_ids, id_errors = _row_ids(None if ids is None else ids.read(n).tolist(), first, n)
        row_labels = [None] * n if labels is None else list(map(str, labels.read(n).tolist()))
        bad = [BadRecord(first + r, None, reason) for r, reason in id_errors.items()]
        if steps is not None:
            block = _concatenated_block(path, first, steps, lengths.read(n), row_ids, row_labels)
        else:
            block, out_of_range = _padded_block(first, main.read(n), None if lengths is None else lengths.read(n),
                                                row_ids, row_labels)
            bad += [BadRecord(first + r, row_ids[r], reason) for r, reason in out_of_range if row_ids[r] is not None]
        if targets is not None:
            block.targets = targets.read(n).tolist()
        yield from bad
        if bad:
            failed = {b.index - first for b in bad}
            block = block.take([r for r in range(n) if r not in failed])
        yield block
    if steps is not None:
        steps.check_used_up()


def _concatenated_block(path: Path, first: int, steps: _StepStream, lengths: np.ndarray, ids: list,
                        labels: list) -> Records:
    negative = np.flatnonzero(lengths < 0)
    if negative.size:
        raise InputError(f"{path}: lengths[{first + int(negative[0])}] is negative ({int(lengths[negative[0]])})")
    block_steps = steps.take(int(lengths.sum()))  # (sum of lengths, F)
    return Records.packed(np.arange(first, first + len(lengths)), ids, block_steps, lengths, labels)


def _padded_block(first: int, x: np.ndarray, lengths: np.ndarray | None, ids: list,
                  labels: list) -> tuple[Records, list[tuple[int, str]]]:
    """Rows of a padded x (n, T, F) with their lengths (n,), packed; and (row, reason) for each length
    outside 0..T (packed as an empty row)."""
    n, T = x.shape[:2]
    lengths = np.full(n, T, np.int64) if lengths is None else lengths.astype(np.int64)
    outside = (lengths < 0) | (lengths > T)  # (n,)
    reasons = [(r, f"lengths: {int(lengths[r])} is outside 0..{T}") for r in np.flatnonzero(outside).tolist()]
    lengths = np.where(outside, 0, lengths)
    real = np.arange(T) < lengths[:, None]  # (n, T)
    steps = x[real].astype(np.float32, copy=False)  # (sum of lengths, F)
    return Records.packed(np.arange(first, first + n), ids, steps, lengths, labels), reasons


class _StepStream:
    """The rows of a concatenated `steps` array, handed out in order, read from the .npz a block at a time."""

    def __init__(self, main: _NpyRows, path: Path) -> None:
        self.main = main
        self.path = path
        self.block_rows = max(1, NPZ_BLOCK_BYTES // max(1, main.row_bytes))
        self.buffer = np.zeros((0, main.shape[-1]), dtype=np.float32)  # read, from `at` on not handed out
        self.at = 0

    def take(self, count: int) -> np.ndarray:
        """The next `count` steps (count, F) float32."""
        if self.main.mapped is not None:  # a view of the file, no buffer needed
            if self.main.left < count:
                raise InputError(f"{self.path}: 'lengths' add up to more steps than 'steps' holds")
            return self.main.read(count).astype(np.float32, copy=False)
        missing = count - (self.buffer.shape[0] - self.at)
        if missing > 0:
            if self.main.left < missing:
                raise InputError(f"{self.path}: 'lengths' add up to more steps than 'steps' holds")
            fresh = self.main.read(max(missing, self.block_rows)).astype(np.float32, copy=False)
            self.buffer, self.at = np.concatenate([self.buffer[self.at :], fresh]), 0
        taken = self.buffer[self.at : self.at + count]
        self.at += count
        return taken

    def check_used_up(self) -> None:
        left = self.buffer.shape[0] - self.at + self.main.left
        if left:
            raise InputError(f"{self.path}: 'steps' holds {left} steps beyond the sum of 'lengths'")


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
            if is_skipped(text):
                continue
            try:
                case = parse_case(text, index, header, "steps")
            except TsFormatError as exc:
                yield BadRecord(index, str(index), str(exc), number)
            else:
                yield Record(index, str(index), case.steps, case.label, number, case.target)
            index += 1


@dataclass(frozen=True)
class CsvColumns:
    """What each column of a long-form CSV file holds."""

    features: list[str]
    targets: list[str]  # `target`, or the `target_*` columns in file order; empty: no target
    has_label: bool
    has_time: bool


def csv_columns(names: list[str], fields: Fields = Fields()) -> CsvColumns:
    """The roles of a long-form CSV file's columns: every column that is not the id, time, label or a
    target is a feature."""
    targets = [n for n in names if n == fields.target or n.startswith(fields.target + "_")]
    roles = {fields.id, fields.time, fields.label, *targets}
    return CsvColumns([n for n in names if n not in roles], targets, fields.label in names, fields.time in names)


def read_csv(path: Path, fields: Fields = Fields()) -> Iterator[Item]:
    """The sequences of a long-form CSV file (one row per step) as one `Records` block, ids in order of
    first appearance, each id's steps in order of `t`; a BadRecord for an id whose label or target
    changes between its rows or whose `t` repeats."""
    table = _read_csv_table(path, fields)
    names = table.column_names
    if fields.id not in names:
        raise InputError(f"{path}: no column {fields.id!r} (columns: {', '.join(names)})")
    roles = csv_columns(names, fields)
    if not roles.features:
        raise InputError(f"{path}: no feature columns (columns: {', '.join(names)})")
    rows = _CsvRows(table, path, fields, roles)
    groups = rows.groups()
    bad = {g: reason for g, reason in rows.problems(groups).items()}
    ids, id_errors = _row_ids(rows.group_ids(groups), 0, len(groups.first))
    bad.update(id_errors)
    lines = (groups.first + 2).tolist()  # line 1 is the header
    yield from (BadRecord(g, ids[g], bad[g], lines[g]) for g in sorted(bad))
    block = Records.packed(np.arange(len(groups.first)), ids, rows.features[groups.order], groups.lengths,
                           rows.first_labels(groups), lines, rows.first_targets(groups))
    yield block.take([g for g in range(len(groups.first)) if g not in bad]) if bad else block


@dataclass(frozen=True)
class _CsvGroups:
    """The rows of a CSV file grouped by id: `order` (rows,) lists the rows id by id, each id's by time;
    group g is order[starts[g] : starts[g] + lengths[g]], first seen at row first[g]."""

    order: np.ndarray  # (rows,) int64
    code: np.ndarray  # (rows,) int64 each row's group
    starts: np.ndarray  # (G,) int64
    lengths: np.ndarray  # (G,) int64
    first: np.ndarray  # (G,) int64


class _CsvRows:
    """The columns of a long-form CSV table as numpy arrays."""

    def __init__(self, table, path: Path, fields: Fields, roles: CsvColumns) -> None:
        self.table, self.fields, self.roles = table, fields, roles
        self.features = np.column_stack([_csv_numbers(table, name, path) for name in roles.features])  # (rows, F)
        self.time = _csv_times(table, fields.time, path) if roles.has_time else None  # (rows,) float64
        self.answers = {name: _csv_objects(table, name) for name in ([fields.label] if roles.has_label else [])
                        + roles.targets}  # (rows,) object each: the label and target columns

    def groups(self) -> _CsvGroups:
        encoded = self.table.column(self.fields.id).combine_chunks().dictionary_encode()
        code = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)  # (rows,) in first-seen order
        order = np.lexsort((self.time, code)) if self.time is not None else np.argsort(code, kind="stable")
        lengths = np.bincount(code, minlength=len(encoded.dictionary))
        first = np.full(len(lengths), len(code), np.int64)
        np.minimum.at(first, code, np.arange(len(code)))
        return _CsvGroups(order, code, np.cumsum(lengths) - lengths, lengths, first)

    def group_ids(self, groups: _CsvGroups) -> list:
        return self.table.column(self.fields.id).take(groups.first).to_pylist()

    def first_labels(self, groups: _CsvGroups) -> list[str | None]:
        if not self.roles.has_label:
            return [None] * len(groups.first)
        return self.answers[self.fields.label][groups.first].tolist()

    def first_targets(self, groups: _CsvGroups) -> list | None:
        """Each group's target: the `target` column's value, or the list of the `target_*` columns' values."""
        columns = [self.answers[name][groups.first].tolist() for name in self.roles.targets]
        if not columns:
            return None
        if self.roles.targets == [self.fields.target]:
            return columns[0]
        return [list(t) for t in zip(*columns, strict=True)]

    def problems(self, groups: _CsvGroups) -> dict[int, str]:
        """Why a group is bad, by group: a label or target that changes between its rows, a repeated time."""
        found: dict[int, str] = {}
        for name, column in self.answers.items():
            firsts = groups.first[groups.code]  # (rows,) the first row of each row's group
            for row in np.flatnonzero(column != column[firsts]).tolist():
                first = int(firsts[row])
                found.setdefault(int(groups.code[row]), f"{name}: changes within the id ({column[first]!r} at line "
                                                        f"{first + 2}, {column[row]!r} at line {row + 2})")
        if self.time is not None:
            ordered = groups.order
            same = (np.diff(groups.code[ordered]) == 0) & (np.diff(self.time[ordered]) == 0)  # (rows - 1,)
            for at in np.flatnonzero(same).tolist():
                g = int(groups.code[ordered[at]])
                found.setdefault(g, f"{self.fields.time}: {self.time[ordered[at]]:g} appears twice "
                                    f"(lines {ordered[at] + 2} and {ordered[at + 1] + 2})")
        return found


def _read_csv_table(path: Path, fields: Fields):
    """The whole CSV file as a pyarrow Table: ids and labels as text, every other column as inferred."""
    try:
        from pyarrow import csv
    except ImportError:
        raise InputError("CSV needs pyarrow: pip install 'seqserve[batch]'") from None
    import pyarrow as pa

    text = {name: pa.string() for name in (fields.id, fields.label)}
    try:
        return csv.read_csv(path, convert_options=csv.ConvertOptions(column_types=text))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"{path}: not a CSV file pyarrow reads ({exc})") from None


def _csv_objects(table, name: str) -> np.ndarray:
    """A column as a (rows,) object array of Python values (None where empty)."""
    values = np.empty(table.num_rows, dtype=object)
    values[:] = table.column(name).to_pylist()
    return values


def _csv_times(table, name: str, path: Path) -> np.ndarray:
    """The time column as float64 (a date or timestamp as its integer count of units)."""
    import pyarrow as pa

    column = table.column(name)
    if pa.types.is_temporal(column.type):
        column = column.cast(pa.int64())
    return _csv_numbers(pa.table({name: column}), name, path, np.float64)


def _csv_numbers(table, name: str, path: Path, dtype: type[np.floating] = np.float32) -> np.ndarray:
    """A numeric column as `dtype` (NaN where empty); InputError naming the first value that is not a number."""
    import pyarrow as pa

    column = table.column(name)
    try:
        return column.cast(pa.from_numpy_dtype(dtype)).to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        row, value = next((r, v) for r, v in enumerate(column.to_pylist()) if v is not None and not _is_number(v))
        raise InputError(f"{path}: line {row + 2}: field {name!r}: {value!r} is not a number") from None


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True
